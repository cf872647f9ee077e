"""The optimisation recipe: optimizer, LR schedule and on-the-fly augmentation.

Schedules (``[train] scheduler``): ``plateau`` halves the LR when validation macro-F1
stalls (per epoch); ``onecycle`` warms up to ``lr`` and anneals to ~0 over the run (per
step); ``cosine`` warms up linearly for ``warmup_epochs``, then decays to 0 along a cosine
(per step); ``none`` keeps ``lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from heartcli.config import AugmentConfig, TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """The LR schedule, told about every optimizer step and every validated epoch."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.kind = cfg.scheduler
        total = cfg.epochs * steps_per_epoch
        self.scheduler: Any = None
        if cfg.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=0.5, patience=max(1, cfg.patience // 3)
            )
        elif cfg.scheduler == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr, total_steps=total
            )
        elif cfg.scheduler == "cosine":
            warmup = round(cfg.warmup_epochs * steps_per_epoch)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: warmup_cosine(step, warmup, total)
            )

    def after_step(self) -> None:
        if self.kind in ("onecycle", "cosine"):
            self.scheduler.step()

    def after_epoch(self, val_macro_f1: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(val_macro_f1)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor at ``step``: linear from ~0 to 1 over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Augment:
    """Random changes to a batch of training beats; draws come from the epoch's generator."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.enabled = bool(cfg.scale or cfg.shift or cfg.noise or cfg.time_shift)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return x
        n, length = x.shape
        cfg = self.cfg

        def uniform(width: float) -> torch.Tensor:
            return (torch.rand(n, 1, generator=gen) * 2 - 1).to(x.device) * width

        if cfg.time_shift:
            shift = torch.randint(-cfg.time_shift, cfg.time_shift + 1, (n, 1), generator=gen)
            source = torch.arange(length).unsqueeze(0) - shift
            inside = ((source >= 0) & (source < length)).to(x.device, x.dtype)
            x = x.gather(1, source.clamp(0, length - 1).to(x.device)) * inside
        if cfg.scale:
            x = x * (1 + uniform(cfg.scale))
        if cfg.shift:
            x = x + uniform(cfg.shift)
        if cfg.noise:
            x = x + torch.randn(n, length, generator=gen).to(x.device) * cfg.noise
        return x
