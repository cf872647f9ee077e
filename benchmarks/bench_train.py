"""Training speed: bf16 vs fp32, the new recipe vs the old one, heart's loop vs a bare loop.

    python benchmarks/bench_train.py [--rounds 5] [--steps 12] [--data data/mitbih]

Every comparison runs its sides interleaved in one process (this machine is shared and
absolute times drift): round after round, each variant runs ``--steps`` optimiser steps on
real training beats, and the medians over the rounds are compared.

1. Precision: the seed model (the default ``[model]``), bf16 autocast vs fp32 at the same
   batch sizes. Target: bf16 >= 1.5x at the new default batch.
2. Epoch wall time on the same training fold: the old recipe (seed model, fp32, batch 32,
   125,224 materialised beats an epoch: examples/mitbih.toml before the fast recipe) vs
   examples/mitbih.toml now (its model, precision, batch and epoch length). An epoch's time
   is its beats over the measured training throughput plus the measured validation time.
   Target: >= 3x less.
3. heart's loop (``train()``) vs a bare PyTorch loop, same model, precision and batch,
   one bare epoch after each heart epoch. Target: overhead <= 5%.
4. ``torch.compile`` on this CPU: compile seconds and throughput vs eager, and what that
   means for a full-data run of examples/mitbih.toml (compile time included).
Results go to benchmarks/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heartcli.config import HeartConfig, ModelConfig, load_config
from heartcli.model.network import build_model
from heartcli.training import EpochInfo, flush_subnormals, prepare_folds, train
from heartcli.training.precision import autocast, native_bf16

REPO = Path(__file__).resolve().parents[1]
MITBIH = REPO / "examples" / "mitbih.toml"
OLD_EPOCH_BEATS = 125_224  # examples/mitbih.toml before: N kept, S V F Q copied to 15,000


class Stepper:
    """A model, optimiser and arithmetic that run optimiser steps on real beats."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        x: np.ndarray,
        y: np.ndarray,
        batch: int,
        precision: str,
        lr: float = 1e-3,
        compiled: bool = False,
    ):
        torch.manual_seed(0)
        self.model: Any = build_model(model_cfg, x.shape[1], 5)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch, self.precision = batch, precision
        self.device = torch.device("cpu")
        self.compile_seconds = 0.0
        self.rng = np.random.default_rng(0)
        if compiled:
            self.model = torch.compile(self.model)
            t0 = time.perf_counter()
            self.steps(2)
            self.compile_seconds = time.perf_counter() - t0
        else:
            self.steps(1)  # warm-up: allocators, oneDNN kernels

    def steps(self, n: int) -> float:
        """Beats per second over ``n`` steps."""
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(n):
            idx = torch.from_numpy(self.rng.integers(0, len(self.y), self.batch))
            self.opt.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                logits = self.model(self.x[idx])
            self.loss_fn(logits.float(), self.y[idx]).backward()
            self.opt.step()
        return n * self.batch / (time.perf_counter() - t0)

    def validate_seconds(self, x_val: torch.Tensor) -> float:
        self.model.eval()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(x_val), 2048):
                self.model(x_val[start : start + 2048])
        return time.perf_counter() - t0


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each variant's figure over ``rounds`` rounds, variants taking turns."""
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            seen[name].append(run())
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in seen.items()))
    return {name: float(np.median(values)) for name, values in seen.items()}


def precision_ratios(fold: Any, batches: list[int], rounds: int, steps: int) -> dict[str, Any]:
    print("1. seed model, bf16 autocast vs fp32 (training beats/s)")
    seed = ModelConfig()
    steppers = {
        f"{p} b{b}": Stepper(seed, fold.x, fold.y, b, p) for b in batches for p in ("fp32", "bf16")
    }
    rates = interleave(
        {k: (lambda s=s: s.steps(max(2, steps * 128 // s.batch))) for k, s in steppers.items()},
        rounds,
    )
    return {
        "beats_per_s": {k: round(v, 1) for k, v in rates.items()},
        "bf16_over_fp32": {
            f"batch {b}": round(rates[f"bf16 b{b}"] / rates[f"fp32 b{b}"], 2) for b in batches
        },
    }


def epoch_ratio(
    fold: Any, val_x: torch.Tensor, cfg: HeartConfig, epoch_beats: int, rounds: int, steps: int
) -> dict[str, Any]:
    print("2. an epoch: old recipe (seed, fp32, batch 32, 125,224 beats) vs examples/mitbih.toml")
    old = Stepper(ModelConfig(), fold.x, fold.y, 32, "fp32")
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    new = Stepper(cfg.model, fold.x, fold.y, cfg.train.batch_size, precision)
    rates = interleave(
        {
            "old beats/s": lambda: old.steps(steps * 4),
            "new beats/s": lambda: new.steps(max(2, steps * 128 // new.batch)),
            "old val ms": lambda: 1000 * old.validate_seconds(val_x),
            "new val ms": lambda: 1000 * new.validate_seconds(val_x),
        },
        rounds,
    )
    old_s = OLD_EPOCH_BEATS / rates["old beats/s"] + rates["old val ms"] / 1000
    new_s = epoch_beats / rates["new beats/s"] + rates["new val ms"] / 1000
    return {
        "old": {
            "beats": OLD_EPOCH_BEATS,
            "beats_per_s": round(rates["old beats/s"], 1),
            "epoch_seconds": round(old_s, 1),
        },
        "new": {
            "beats": epoch_beats,
            "batch": cfg.train.batch_size,
            "precision": precision,
            "beats_per_s": round(rates["new beats/s"], 1),
            "epoch_seconds": round(new_s, 1),
        },
        "epoch_time_ratio": round(old_s / new_s, 2),
    }


def loop_overhead(cfg: HeartConfig, epochs: int) -> dict[str, Any]:
    """heart's train() vs a bare loop on the sample: same model, arithmetic, batch and beats."""
    print("3. heart's loop vs a bare loop (data/sample, examples/mitbih.toml's recipe)")
    cfg = cfg.model_copy(deep=True)
    cfg.data.dir = str(REPO / "data" / "sample")
    cfg.tracking.enabled = False
    cfg.resample.strategy = "none"
    cfg.train.epochs, cfg.train.patience, cfg.train.epoch_beats = epochs, 1000, 0
    folds = prepare_folds(cfg)
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    bare = Stepper(cfg.model, folds.train.x, folds.train.y, cfg.train.batch_size, precision)
    n_steps = max(1, len(folds.train) // cfg.train.batch_size)
    bare_rates: list[float] = []

    def after_heart_epoch(info: EpochInfo) -> None:
        bare_rates.append(bare.steps(n_steps))  # one bare epoch after each heart epoch
        print(f"  epoch {info.epoch}: heart {info.beats_per_s:.0f}, bare {bare_rates[-1]:.0f}")

    with tempfile.TemporaryDirectory() as tmp:
        history = train(cfg, Path(tmp) / "run", on_epoch=after_heart_epoch).history
    heart = float(np.median([h["beats_per_s"] for h in history][1:]))
    bare_median = float(np.median(bare_rates[1:]))
    return {
        "heart_beats_per_s": round(heart, 1),
        "bare_beats_per_s": round(bare_median, 1),
        "overhead_percent": round(100 * (bare_median - heart) / bare_median, 2),
    }


def compile_check(
    fold: Any, cfg: HeartConfig, epoch_beats: int, epochs: int, rounds: int, steps: int
) -> dict[str, Any]:
    print("4. torch.compile vs eager (examples/mitbih.toml's model and batch)")
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    batch = cfg.train.batch_size
    eager = Stepper(cfg.model, fold.x, fold.y, batch, precision)
    try:
        compiled = Stepper(cfg.model, fold.x, fold.y, batch, precision, compiled=True)
    except Exception as exc:  # the inductor needs a C++ compiler; report, do not crash
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    n = max(2, steps * 128 // batch)
    rates = interleave(
        {"eager": lambda: eager.steps(n), "compiled": lambda: compiled.steps(n)}, rounds
    )
    run_eager = epochs * epoch_beats / rates["eager"]
    run_compiled = compiled.compile_seconds + epochs * epoch_beats / rates["compiled"]
    return {
        "compile_seconds": round(compiled.compile_seconds, 1),
        "eager_beats_per_s": round(rates["eager"], 1),
        "compiled_beats_per_s": round(rates["compiled"], 1),
        "full_run_training_seconds": {"eager": round(run_eager), "compiled": round(run_compiled)},
        "compiled_over_eager_end_to_end": round(run_eager / run_compiled, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="steps of batch 128 per round")
    parser.add_argument(
        "--data",
        default=str(REPO / "data" / "mitbih"),
        help="dataset folder (falls back to data/sample)",
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: 1,2,3,4")
    args = parser.parse_args()
    flush_subnormals()  # as train() does, before torch starts its threads
    data = args.data if Path(args.data, "manifest.json").exists() else str(REPO / "data/sample")
    cfg = load_config(MITBIH, [f"data.dir={data}", "tracking.enabled=false"])
    folds = prepare_folds(cfg)
    val_x = torch.from_numpy(folds.val.x)
    skip = set(args.skip.split(","))
    result: dict[str, Any] = {
        "data": data,
        "train_beats": len(folds.train),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "native_bf16": native_bf16(torch.device("cpu")),
        "torch": torch.__version__,
        "load_average_before": list(os.getloadavg()),
    }
    epoch_beats = len(folds.sampler)
    if "1" not in skip:
        result["precision"] = precision_ratios(
            folds.train, [cfg.train.batch_size, 512], args.rounds, args.steps
        )
    if "2" not in skip:
        result["epoch"] = epoch_ratio(folds.train, val_x, cfg, epoch_beats, args.rounds, args.steps)
    if "3" not in skip:
        result["loop_overhead"] = loop_overhead(cfg, epochs=4)
    if "4" not in skip:
        result["compile"] = compile_check(
            folds.train, cfg, epoch_beats, cfg.train.epochs, args.rounds, args.steps
        )
    result["load_average_after"] = list(os.getloadavg())
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
