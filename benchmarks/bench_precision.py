"""Quality parity: the same config trained in fp32 and in bf16 (same seed, same epochs).

    python benchmarks/bench_precision.py [--config examples/mitbih.toml] [--epochs N]
        [--seeds 42] [--set KEY=VALUE ...]

Trains the config once per precision and seed (sides alternating), then compares the best
validation macro-F1. Target: within 0.005 of each other; if they are not, ``precision =
"auto"`` should stay fp32. Also prints each side's training beats/s and wall seconds.
Results go to benchmarks/results/bench_precision.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from heartcli.config import load_config
from heartcli.training import flush_subnormals, train
from heartcli.training.precision import native_bf16

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "mitbih.toml"))
    parser.add_argument("--epochs", type=int, default=0, help="0 = the config's")
    parser.add_argument("--seeds", default="42", help="comma-separated train.seed values")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()
    if not native_bf16(torch.device("cpu")):
        raise SystemExit("this CPU has no native bf16: nothing to compare")
    flush_subnormals()
    sets = ["tracking.enabled=false", *args.sets]
    if args.epochs:
        sets.append(f"train.epochs={args.epochs}")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds.split(","):
            for precision in ("fp32", "bf16"):
                cfg = load_config(
                    args.config, [*sets, f"train.seed={seed}", f"train.precision={precision}"]
                )
                result = train(cfg, Path(tmp) / f"{precision}-{seed}")
                runs.append(
                    {
                        "seed": int(seed),
                        "precision": precision,
                        "best_val_macro_f1": round(result.best_metric, 4),
                        "best_epoch": result.best_epoch,
                        "final_val_macro_f1": round(result.history[-1]["val_macro_f1"], 4),
                        "beats_per_s": round(result.manifest["timings"]["train_beats_per_s"], 1),
                        "seconds": round(result.seconds, 1),
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    pairs = [
        (a, b)
        for a in runs
        for b in runs
        if a["seed"] == b["seed"] and a["precision"] == "fp32" and b["precision"] == "bf16"
    ]
    diffs = [round(b["best_val_macro_f1"] - a["best_val_macro_f1"], 4) for a, b in pairs]
    result = {
        "config": args.config,
        "sets": sets,
        "runs": runs,
        "bf16_minus_fp32_best_val_macro_f1": diffs,
        "within_0.005": all(abs(d) <= 0.005 for d in diffs),
    }
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_precision.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
