"""`heart tune` with and without the median stopping rule: 20 trials of a small space.

Same space, seed and data (the bundled sample) both times; MLflow is off so the figures are
the search's own. Prints the wall time and best validation macro-F1 of each, and writes
them to benchmarks/results/bench_tune.json. Target: median stopping takes at least 1.5x
less wall time at a best score within 0.01.

    python benchmarks/bench_tune.py [--evals 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heartcli.config import load_config  # noqa: E402
from heartcli.search import new_search, run_search  # noqa: E402

CONFIG = """
[data]
dir = "{data}"

[tracking]
enabled = false

[model]
conv_layers = 3
channels = [16, 32, 32]
kernel_sizes = [7, 5, 3]
pooling = ["max", "max", "none"]
pool_output = 4
fc = [64, 32, 16]

[resample]
strategy = "random"
target = 400

[train]
epochs = 10
batch_size = 64
patience = 10
threads = 1

[search]
evals = {evals}
seed = 7
median_stopping = {stopping}
warmup_epochs = 1
min_trials = 3
startup_trials = 8

[search.space]
"train.lr" = {{loguniform = [1e-4, 3e-2]}}
"train.batch_size" = {{choice = [32, 64, 128]}}
"model.dropout" = {{uniform = [0.0, 0.5]}}
"model.kernel_sizes" = {{per_layer = {{choice = [3, 5, 7]}}}}
"model.channels" = {{each = [{{choice = [8, 16]}}, {{choice = [16, 32]}}, {{choice = [16, 32]}}]}}
"train.optimizer" = {{choice = ["adam", "adamw"]}}
"""


def run(evals: int, stopping: bool, work: Path) -> dict:
    name = "stopping" if stopping else "full"
    path = work / f"{name}.toml"
    path.write_text(
        CONFIG.format(data=REPO / "data" / "sample", evals=evals, stopping=str(stopping).lower())
    )
    config = load_config(path, [f"train.runs_dir={work / 'runs'}"])
    started = time.perf_counter()
    result = run_search(new_search(config, name))
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for r in result.records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "median_stopping": stopping,
        "trials": len(result.records),
        "statuses": statuses,
        "epochs": sum(r.epochs_run for r in result.records),
        "wall_s": round(seconds, 1),
        "best_val_macro_f1": round(result.best.metric, 4) if result.best else None,
        "best_trial": result.best.number if result.best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Warm-up: the first trial of a process pays for imports and allocator growth.
        (work / "warmup").mkdir()
        run(1, False, work / "warmup")
        full = run(args.evals, False, work)
        print(f"without median stopping: {full}", flush=True)
        stopped = run(args.evals, True, work)
        print(f"with median stopping: {stopped}", flush=True)
    speedup = full["wall_s"] / stopped["wall_s"]
    gap = full["best_val_macro_f1"] - stopped["best_val_macro_f1"]
    for row in (full, stopped):
        print(
            f"median stopping {'on ' if row['median_stopping'] else 'off'}: "
            f"{row['trials']} trials {row['statuses']}, {row['epochs']} epochs, "
            f"{row['wall_s']:.1f}s, best val macro-F1 {row['best_val_macro_f1']:.4f} "
            f"(trial {row['best_trial']})"
        )
    print(f"speed-up {speedup:.2f}x (target >= 1.5x), best-score gap {gap:+.4f} (target <= 0.01)")
    out = REPO / "benchmarks" / "results" / "bench_tune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "evals": args.evals,
                "without": full,
                "with": stopped,
                "speedup": round(speedup, 2),
                "best_gap": round(gap, 4),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
