"""Training throughput: heartcli's loop vs a bare PyTorch loop, same model, batch and beats.

    python benchmarks/bench_train.py [--epochs 4] [--batch 128]

The default (seed) model trains on the real beats of data/sample (random split, training
fold after the validation carve-out, no resampling). Both loops run the same number of
optimiser steps per epoch; beats/s counts the training phase only (heart's per-epoch
validation, checkpoint and logging are timed separately and reported as epoch overhead).
Each heart epoch is followed by one bare epoch (in heart's on_epoch callback), so that
background load hits both alike; the medians after the first epoch are compared.
Target: heart's overhead <= 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heartcli.config import HeartConfig
from heartcli.model import build_model
from heartcli.training import EpochInfo, flush_subnormals, prepare_folds, train

REPO = Path(__file__).resolve().parents[1]


def config(epochs: int, batch: int) -> HeartConfig:
    return HeartConfig.model_validate(
        {
            "data": {"dir": str(REPO / "data" / "sample"), "split": "random"},
            "tracking": {"enabled": False},
            "resample": {"strategy": "none"},
            "train": {"epochs": epochs, "batch_size": batch, "patience": 100, "device": "cpu"},
        }
    )


class BareLoop:
    """The textbook loop: same model config, optimiser and batches; nothing else."""

    def __init__(self, cfg: HeartConfig):
        folds = prepare_folds(cfg)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, folds.train.length, len(folds.train.classes))
        self.x = torch.from_numpy(folds.train.x)
        self.y = torch.from_numpy(folds.train.y)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.bs = cfg.train.batch_size
        self.rates: list[float] = []

    def epoch(self) -> None:
        self.model.train()
        order = torch.randperm(len(self.y))
        t0 = time.perf_counter()
        for start in range(0, len(self.y), self.bs):
            idx = order[start : start + self.bs]
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
        self.rates.append(len(self.y) / (time.perf_counter() - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each loop")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    # heart's train() flushes subnormals to zero; do it first, so both loops share it.
    flush_subnormals()
    cfg = config(args.epochs, args.batch)
    bare = BareLoop(cfg)

    def after_heart_epoch(info: EpochInfo) -> None:
        # One bare epoch right after each heart epoch: background load hits both alike.
        bare.epoch()
        print(
            f"epoch {info.epoch}: heart {info.beats_per_s:.0f} beats/s, "
            f"bare {bare.rates[-1]:.0f} beats/s"
        )

    with tempfile.TemporaryDirectory() as tmp:
        history = train(cfg, Path(tmp) / "run", on_epoch=after_heart_epoch).history
    # The first epoch of each warms up allocators and kernels.
    heart_rates = [h["beats_per_s"] for h in history][1:]
    bare_rates = bare.rates[1:]
    heart_median, bare_median = float(np.median(heart_rates)), float(np.median(bare_rates))
    overhead = 100.0 * (bare_median - heart_median) / bare_median
    result = {
        "model": "default (seed) config",
        "batch_size": args.batch,
        "train_beats": len(bare.y),
        "epochs_measured": len(heart_rates),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
        "heart_beats_per_s": round(heart_median, 1),
        "bare_beats_per_s": round(bare_median, 1),
        "overhead_percent": round(overhead, 2),
        "heart_epoch_seconds_with_validation": round(
            float(np.median([h["seconds"] for h in history][1:])), 2
        ),
    }
    print(json.dumps(result, indent=2))
    print(
        f"heart {heart_median:.0f} beats/s vs bare {bare_median:.0f} beats/s (medians): "
        f"overhead {overhead:+.1f}% (target <= 5%)"
    )
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
