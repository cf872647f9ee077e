"""The training loop behind `heart train` (and every `heart tune` trial).

:func:`train` reads top to bottom as its steps: open (or resume) the run folder, prepare
the folds, build the setup (model, precision, optimizer, schedule, sampler), start the run
record, then per epoch: train one epoch, validate, keep the best weights and checkpoint,
log, and decide whether to stop; finally, finish the run record.

The steps live beside it: the setup and the state between epochs in
:mod:`heartcli.training.setup`, one epoch in :mod:`heartcli.training.epoch`, and the run
record (what the run folder holds, MLflow) in :mod:`heartcli.training.record`.

Reproducible on CPU: the weights come from ``torch.manual_seed(seed)``, and every epoch
reseeds its draws, augmentation and dropout from ``(seed, epoch)``, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartcli.config import HeartConfig
from heartcli.data.dataset import BeatSet
from heartcli.metrics import macro_f1_from_confusion
from heartcli.progress import Progress
from heartcli.threads import ThreadPolicy, omp_wait_policy
from heartcli.training.epoch import EpochInfo, train_epoch, validate
from heartcli.training.folds import Folds, prepare_folds
from heartcli.training.record import (
    check_resumed_data,
    finish,
    keep_best,
    keep_last,
    log_epoch,
    open_run,
    record_failure,
    save_checkpoint,
    start_record,
)
from heartcli.training.setup import LoopState, Setup, build_setup, restore_state


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed, early_stopped, budget, pruned, interrupted
    best_epoch: int
    best_metric: float
    epochs_run: int
    history: list[dict[str, Any]]
    seconds: float
    parameters: int = 0
    tracking_run_id: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds_to_best: float = 0.0
    best_confusion: list[list[int]] | None = None  # validation, at the best epoch

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "best_epoch": self.best_epoch,
            "best_val_macro_f1": self.best_metric,
            "epochs_run": self.epochs_run,
            "parameters": self.parameters,
            "precision": self.manifest.get("precision"),
            "seconds": round(self.seconds, 2),
            "seconds_to_best": round(self.seconds_to_best, 2),
            "tracking_run_id": self.tracking_run_id,
            "history": self.history,
        }


def flush_subnormals() -> None:
    """Treat subnormal floats as zero on the CPU, in this thread and the threads torch starts.

    A few epochs into training, the seed CNN's backward pass is full of subnormal values
    (below 1.2e-38), and x86 cores handle those 5-10x slower: measured on this project's
    2-core machine, 31 vs 200 beats/s (one thread, batch 32, weights after 3 epochs).
    torch's worker threads copy the setting from the thread that starts them, so this must
    run before the first parallel torch operation of the process; later it fixes only the
    calling thread. Flushing changes values by less than 1.2e-38.
    """
    torch.set_flush_denormal(True)


# --------------------------------------------------------------------------- the loop


def train(
    config: HeartConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[EpochInfo], bool | None] | None = None,
    progress: Progress | None = None,
    tracking_parent: str | None = None,
    train_data: BeatSet | None = None,
    val_data: BeatSet | None = None,
    config_base: Any = None,
    validation: bool = True,
) -> TrainResult:
    """Train ``config`` into ``run_dir``; ``resume`` continues from its checkpoint.pt.

    ``on_epoch`` returning True stops the run (status "pruned"). ``progress`` is told the
    run's summary, each epoch as a task of ``steps`` and its figures (an :class:`EpochInfo`)
    when done. ``train_data`` / ``val_data`` replace the split named by ``[data]`` (a tuner
    loads it once). ``config_base`` is the user's TOML document, whose comments config.toml
    keeps. ``validation=False`` trains on the whole training split for ``[train] epochs``
    and keeps the last epoch's weights (no validation, no early stopping).
    """
    # Before the first parallel torch op, so that torch's worker threads inherit it.
    flush_subnormals()
    started = time.perf_counter()
    threads = ThreadPolicy(config.train.threads)  # measures from here
    run_dir = Path(run_dir)
    progress = progress or Progress()

    checkpoint, old_manifest = open_run(run_dir, resume)
    folds = prepare_folds(config, train_data, val_data, validation=validation)
    if resume:
        check_resumed_data(run_dir, old_manifest, folds)
    setup = build_setup(config, folds, threads)
    state = restore_state(setup, checkpoint, run_dir)

    tracker, manifest = start_record(
        config, run_dir, setup, folds, state, old_manifest, tracking_parent, config_base
    )
    progress.start(start_summary(config, run_dir, setup, folds, state))

    cfg = config.train
    try:
        if state.since_best >= cfg.patience and state.epoch < cfg.epochs:
            state.status = "early_stopped"  # a resumed run that had already stopped
        else:
            _epochs(config, run_dir, setup, state, started, tracker, progress, on_epoch)
    except KeyboardInterrupt:
        state.status = "interrupted"
    except BaseException:
        record_failure(run_dir, manifest, tracker)
        raise

    seconds = state.elapsed(started)
    try:
        finish(config, run_dir, setup, state, manifest, tracker, seconds)
    except BaseException:
        record_failure(run_dir, manifest, tracker)
        raise
    return TrainResult(
        run_dir=run_dir,
        status=state.status,
        best_epoch=state.best_epoch,
        best_metric=max(state.best_metric, 0.0),
        epochs_run=len(state.history),
        history=state.history,
        seconds=seconds,  # every invocation's, as epochs_run counts every epoch
        parameters=setup.parameters,
        tracking_run_id=tracker.run_id,
        manifest=manifest,
        seconds_to_best=state.seconds_to_best(),
        best_confusion=state.best_cm,
    )


def start_summary(
    config: HeartConfig, run_dir: Path, setup: Setup, folds: Folds, state: LoopState
) -> dict[str, Any]:
    """What :meth:`Progress.start` is told: the run, its arithmetic, threads and data."""
    return {
        "run_dir": str(run_dir),
        "parameters": setup.parameters,
        "device": str(setup.device),
        "precision": setup.precision,
        "threads": setup.threads.choice.threads,
        "threads_text": setup.threads.choice.describe(),
        "threads_warning": setup.threads.choice.warning(),
        "omp_wait_policy": omp_wait_policy(),
        "classes": setup.classes,
        "train_counts": folds.before,
        "resampled_counts": folds.after,
        "val_counts": folds.val.counts(),
        "start_epoch": state.epoch + 1,
        "epochs": config.train.epochs,
        "steps": setup.steps,
        "batch_size": config.train.batch_size,
    }


def _epochs(
    config: HeartConfig,
    run_dir: Path,
    setup: Setup,
    state: LoopState,
    started: float,
    tracker: Any,
    progress: Progress,
    on_epoch: Callable[[EpochInfo], bool | None] | None,
) -> None:
    """Epoch after epoch until the last, a stop rule, or ``on_epoch`` says stop."""
    cfg = config.train
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        lr = setup.optimizer.param_groups[0]["lr"]
        progress.task(f"epoch {epoch}", setup.steps)
        t0 = time.perf_counter()
        train_loss, seen, train_seconds = train_epoch(setup, cfg.seed, epoch, progress)

        # Validate, then let the schedule react and keep the best weights.
        state.epoch = epoch
        if setup.validation:
            val_loss, cm = validate(setup)
            val_f1 = macro_f1_from_confusion(cm)
            setup.schedule.after_epoch(val_f1)
            improved = keep_best(setup, state, epoch, cm, run_dir)
        else:
            val_loss, val_f1 = math.nan, math.nan
            cm = np.zeros((len(setup.classes),) * 2, dtype=np.int64)
            improved = keep_last(setup, state, epoch, run_dir)
        support = cm.sum(axis=1)
        classes = setup.classes
        info = EpochInfo(
            epoch=epoch,
            epochs=cfg.epochs,
            train_loss=train_loss,
            val_loss=val_loss,
            val_macro_f1=val_f1,
            val_recall={
                classes[i]: float(cm[i, i] / support[i]) for i in range(len(classes)) if support[i]
            },
            lr=lr,
            beats_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
            seconds=time.perf_counter() - t0,
            elapsed=state.elapsed(started),
            best=improved,
            threads=setup.threads.choice.threads,
        )
        state.history.append(info.row())
        save_checkpoint(setup, state, run_dir, state.elapsed(started))
        log_epoch(tracker, info)
        progress.done(f"epoch {epoch}", info)
        setup.threads.recheck()  # "auto": another program may have started or stopped
        if on_epoch is not None and on_epoch(info):
            state.status = "pruned"
            return
        reason = stop_reason(config, state, state.elapsed(started))
        if reason:
            state.status = reason
            return


def stop_reason(config: HeartConfig, state: LoopState, elapsed: float) -> str | None:
    """Why the run stops after this epoch, or None to go on."""
    cfg = config.train
    if state.since_best >= cfg.patience and state.epoch < cfg.epochs:
        return "early_stopped"
    if cfg.max_minutes and elapsed >= cfg.max_minutes * 60 and state.epoch < cfg.epochs:
        return "budget"
    return None
