"""What the epochs need, and where the run stands between them.

:func:`build_setup` makes the :class:`Setup` once per invocation (model, arithmetic,
optimizer, schedule, sampler and the fold's tensors, before anything is written);
:func:`restore_state` gives a fresh :class:`LoopState` or a checkpoint's, weights and
optimizer restored into the setup.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heartcli.config import RHYTHM_FEATURES, HeartConfig
from heartcli.data.dataset import BeatSet
from heartcli.errors import DataError, UsageError
from heartcli.model import runs
from heartcli.model.inference import uses_rhythm
from heartcli.model.network import build_model, count_parameters
from heartcli.threads import ThreadPolicy
from heartcli.training.ema import WeightAverage
from heartcli.training.folds import Folds
from heartcli.training.precision import pick_device, resolve_precision
from heartcli.training.recipe import Augment, Schedule, make_optimizer
from heartcli.training.sampler import EpochSampler

# What a resumed run must keep: changing these mid-run would train a different recipe.
FIXED_ON_RESUME = ("precision", "sampler")


@dataclass
class Setup:
    """Everything the epochs need, built once per invocation."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loss_fn: nn.Module
    augment: Augment
    sampler: EpochSampler
    device: torch.device
    precision: str
    threads: ThreadPolicy  # torch's thread count, re-checked after every epoch ("auto")
    parameters: int
    steps: int
    batch_size: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    recipe: dict[str, Any]  # what FIXED_ON_RESUME compares
    r_train: torch.Tensor | None = None  # rhythm features, for a [model] rhythm model
    r_val: torch.Tensor | None = None
    rhythm: dict[str, Any] | None = None  # columns, features, the training fold's center and scale
    validation: bool = True  # False: no validation fold (the final run of --folds)
    ema: WeightAverage | None = None  # [train] ema: the weights' moving average

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and the run saves: the moving average, or the model."""
        return self.model if self.ema is None else self.ema.model

    def train_inputs(self, x: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        return [x] if self.r_train is None else [x, self.r_train[index]]

    def val_inputs(self) -> list[torch.Tensor]:
        return [self.x_val] if self.r_val is None else [self.x_val, self.r_val]


@dataclass
class LoopState:
    """Where the run stands between epochs: what a checkpoint saves and a resume restores."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    best_cm: list[list[int]] | None = None
    seconds_before: float = 0.0  # wall seconds of earlier invocations
    status: str = "completed"

    def elapsed(self, started: float) -> float:
        return self.seconds_before + time.perf_counter() - started

    def seconds_to_best(self) -> float:
        row = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        return float(row.get("elapsed") or 0.0)


def _tensor(array: np.ndarray, dtype: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(device)


def rhythm_statistics(model: nn.Module, train: BeatSet) -> dict[str, Any] | None:
    """Fit a rhythm model's standardisation to the training fold (model buffers, saved with
    the weights); what the manifest records of it."""
    head = getattr(model, "rhythm", None)
    if not uses_rhythm(model) or head is None or train.rhythm is None:
        return None
    center, scale = head.fit(torch.from_numpy(np.ascontiguousarray(train.rhythm)))
    return {
        "columns": list(RHYTHM_FEATURES),
        "used": list(head.columns),
        "scale_kind": "log" if head.log else "linear",
        "center": [round(float(v), 6) for v in center],
        "scale": [round(float(v), 6) for v in scale],
    }


def build_setup(config: HeartConfig, folds: Folds, threads: ThreadPolicy) -> Setup:
    """Model, arithmetic, optimizer, schedule and the tensors, before anything is written.

    A config that shrinks the beats to nothing, or asks for bf16 where there is none,
    fails here. ``threads`` chooses torch's thread count first (``auto``: from the CPU
    that other programs used while the data loaded).
    """
    cfg = config.train
    threads.start()
    torch.manual_seed(cfg.seed)
    classes, length = folds.train.classes, folds.train.length
    model = build_model(config.model, length, len(classes))
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    epoch_beats = len(folds.sampler)
    # Whole batches only (a batch of one breaks BatchNorm); the draws left over this
    # epoch are drawn again the next.
    steps = max(1, math.floor(epoch_beats * cfg.steps_fraction / cfg.batch_size))
    weights = torch.from_numpy(folds.weights).to(device) if folds.weights is not None else None
    optimizer = make_optimizer(model, cfg)
    resample = config.resample
    rhythm = rhythm_statistics(model, folds.train)
    return Setup(
        model=model,
        optimizer=optimizer,
        schedule=Schedule(optimizer, cfg, steps),
        loss_fn=nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing),
        augment=Augment(config.augment),
        sampler=folds.sampler,
        device=device,
        precision=precision,
        threads=threads,
        parameters=count_parameters(model),
        steps=steps,
        batch_size=cfg.batch_size,
        x_train=_tensor(folds.train.x, np.float32, device),
        y_train=_tensor(folds.train.y, np.int64, device),
        x_val=_tensor(folds.val.x, np.float32, device),
        y_val=_tensor(folds.val.y, np.int64, device),
        classes=classes,
        recipe={
            "precision": precision,
            "sampler": {
                "strategy": resample.strategy,
                "target": resample.target,
                "majority": resample.majority,
                "seed": resample.seed,
                "epoch_beats": cfg.epoch_beats,
            },
        },
        r_train=(
            None
            if rhythm is None or folds.train.rhythm is None
            else _tensor(folds.train.rhythm, np.float32, device)
        ),
        r_val=(
            None
            if rhythm is None or folds.val.rhythm is None
            else _tensor(folds.val.rhythm, np.float32, device)
        ),
        rhythm=rhythm,
        validation=len(folds.val) > 0,
        ema=WeightAverage(model, cfg.ema) if cfg.ema else None,
    )


def restore_state(setup: Setup, checkpoint: dict[str, Any] | None, run_dir: Path) -> LoopState:
    """A fresh state, or the checkpoint's: weights, optimizer, schedule and the history."""
    if checkpoint is None:
        return LoopState()
    saved = checkpoint.get("recipe") or {}
    for key in FIXED_ON_RESUME:
        if key in saved and saved[key] != setup.recipe[key]:
            where = "train.precision" if key == "precision" else "[resample] / train.epoch_beats"
            raise UsageError(
                f"{where}: {run_dir} trained with {key} {saved[key]}, the config now gives "
                f"{setup.recipe[key]}; a resumed run keeps its {key} (start a new run instead)"
            )
    try:
        setup.model.load_state_dict(checkpoint["model"])
        setup.optimizer.load_state_dict(checkpoint["optimizer"])
        setup.schedule.load_state_dict(checkpoint.get("scheduler") or {})
        if setup.ema is not None and checkpoint.get("ema"):
            setup.ema.load_state_dict(checkpoint["ema"])
        elif setup.ema is not None:  # ema turned on at resume: average from these weights
            setup.ema = WeightAverage(setup.model, setup.ema.decay)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise DataError(
            f"{run_dir / runs.CHECKPOINT}: does not match config.toml ({type(exc).__name__}); "
            "resume with the run's own config"
        ) from None
    return LoopState(
        epoch=int(checkpoint["epoch"]),
        history=list(checkpoint["history"]),
        best_metric=float(checkpoint["best_metric"]),
        best_epoch=int(checkpoint["best_epoch"]),
        since_best=int(checkpoint["since_best"]),
        best_cm=checkpoint.get("best_cm"),
        seconds_before=float(checkpoint.get("seconds", 0.0)),
    )
