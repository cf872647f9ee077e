"""One epoch: train it (forward, backward, step) and validate; what it is told as.

:class:`EpochInfo` is an epoch's figures: what ``Progress.done`` and ``on_epoch`` are
given, and one row of history.csv.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from heartcli.errors import HeartError
from heartcli.metrics import confusion_matrix
from heartcli.model.inference import torch_logits
from heartcli.progress import Progress
from heartcli.training.precision import autocast
from heartcli.training.setup import Setup

PROGRESS_EVERY = 10  # batches between progress callbacks: cheap, but not free
# What a resumed run must keep: changing these mid-run would train a different recipe.


class TrainingDiverged(HeartError):
    """The loss became NaN or infinite."""


@dataclass
class EpochInfo:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_macro_f1: float
    val_recall: dict[str, float]
    lr: float
    beats_per_s: float
    seconds: float
    elapsed: float = 0.0  # wall seconds of the run at the end of this epoch, every invocation
    best: bool = False
    threads: int = 0  # torch threads this epoch ran with

    def row(self) -> dict[str, Any]:
        """One history.csv row: the figures, recall flattened to ``val_recall_<class>``."""
        data = asdict(self)
        recall = data.pop("val_recall")
        data.pop("epochs")
        data.update({f"val_recall_{k}": v for k, v in recall.items()})
        return data


def train_epoch(
    setup: Setup, seed: int, epoch: int, progress: Progress
) -> tuple[float, int, float]:
    """One epoch of forward, backward and step: (mean train loss, beats seen, seconds)."""
    # Draws, augmentation and dropout are seeded per epoch: resuming replays the same epochs.
    torch.manual_seed(seed + epoch)
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.from_numpy(setup.sampler.indices(epoch)).to(setup.device)
    model, optimizer, bs = setup.model, setup.optimizer, setup.batch_size
    model.train()
    t0 = time.perf_counter()
    total_loss = torch.zeros((), device=setup.device)
    seen = 0
    for step in range(setup.steps):
        index = order[step * bs : (step + 1) * bs]
        if len(index) == 0:
            break
        optimizer.zero_grad(set_to_none=True)
        x = setup.augment(setup.x_train[index], gen)
        with autocast(setup.device, setup.precision):
            logits = model(*setup.train_inputs(x, index))
        loss = setup.loss_fn(logits.float(), setup.y_train[index])
        loss.backward()
        optimizer.step()
        setup.schedule.after_step()
        if setup.ema is not None:
            setup.ema.update(model)
        total_loss += loss.detach() * len(index)
        seen += len(index)
        if (step + 1) % PROGRESS_EVERY == 0:
            progress.advance(PROGRESS_EVERY)
    progress.advance(setup.steps % PROGRESS_EVERY)
    train_loss = float(total_loss.item()) / max(seen, 1)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"training diverged: the loss became {train_loss} in epoch {epoch}; "
            "lower train.lr or check the data"
        )
    return train_loss, seen, time.perf_counter() - t0


def validate(setup: Setup) -> tuple[float, np.ndarray]:
    """Validation loss and confusion matrix, in fp32 whatever the training arithmetic."""
    setup.eval_model.eval()
    with torch.inference_mode():
        logits = torch_logits(setup.eval_model, setup.val_inputs())
        if not bool(torch.isfinite(logits).all()):
            raise TrainingDiverged(
                "training diverged: the model outputs NaN or inf on validation beats; "
                "lower train.lr or check the data (no epoch is scored on them)"
            )
        loss = float(setup.loss_fn(logits, setup.y_val).item())
    y_pred = logits.argmax(dim=1).cpu().numpy()
    return loss, confusion_matrix(setup.y_val.cpu().numpy(), y_pred, len(setup.classes))
