"""The training loop behind `heart train` (and every `heart tune` trial).

:func:`train` reads top to bottom as its steps: open (or resume) the run folder, prepare
the folds, build the setup (model, precision, optimizer, schedule, sampler), start the run
record, then per epoch: train one epoch, validate, keep the best weights and checkpoint,
log, and decide whether to stop; finally, finish the run record.

Reproducible on CPU: the weights come from ``torch.manual_seed(seed)``, and every epoch
reseeds its draws, augmentation and dropout from ``(seed, epoch)``, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heartcli import __version__
from heartcli.config import RHYTHM_FEATURES, HeartConfig
from heartcli.data.dataset import MANIFEST as DATA_MANIFEST
from heartcli.data.dataset import BeatSet, read_manifest
from heartcli.errors import DataError, HeartError, UsageError
from heartcli.io import sha256_file, write_text
from heartcli.metrics import confusion_matrix, macro_f1_from_confusion
from heartcli.model import runs
from heartcli.model.inference import torch_logits, uses_rhythm
from heartcli.model.network import build_model, count_parameters
from heartcli.progress import Progress
from heartcli.threads import ThreadPolicy, omp_wait_policy
from heartcli.training.ema import WeightAverage
from heartcli.training.folds import Folds, prepare_folds
from heartcli.training.precision import autocast, pick_device, resolve_precision
from heartcli.training.recipe import Augment, Schedule, make_optimizer
from heartcli.training.sampler import EpochSampler

PROGRESS_EVERY = 10  # batches between progress callbacks: cheap, but not free
# What a resumed run must keep: changing these mid-run would train a different recipe.
FIXED_ON_RESUME = ("precision", "sampler")


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


# --------------------------------------------------------------------------- helpers


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


def _history_csv(history: list[dict[str, Any]], classes: list[str]) -> str:
    fields = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_macro_f1",
        *[f"val_recall_{c}" for c in classes],
        "lr",
        "beats_per_s",
        "seconds",
        "elapsed",
        "best",
        "threads",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    return {
        "heartcli": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


# --------------------------------------------------------------------------- the steps


def open_run(run_dir: Path, resume: bool) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(checkpoint, manifest) of the run to resume, or (None, {}) for a fresh folder.

    A run folder holds one run: a fresh run refuses a folder that already holds one. A run
    stopped before its first epoch ended has no checkpoint: resumed, it starts at epoch 1
    (with its own config), so a name is always either free or continued by ``--resume``.
    """
    if resume:
        manifest = runs.read_run_manifest(run_dir)
        if not (run_dir / runs.CHECKPOINT).exists():
            return None, manifest
        return runs.load_checkpoint(run_dir), manifest
    if (run_dir / runs.MANIFEST).exists():
        raise UsageError(
            f"{run_dir} already holds a run; pick another name or `heart train --resume {run_dir}`"
        )
    return None, {}


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


def start_manifest(
    config: HeartConfig,
    run_dir: Path,
    setup: Setup,
    folds: Folds,
    state: LoopState,
    old_manifest: dict[str, Any],
    tracking: dict[str, Any],
) -> dict[str, Any]:
    """The run's manifest.json while it runs (status "running")."""
    data_manifest: dict[str, Any] = {}
    data_sha = None
    with contextlib.suppress(DataError):
        data_manifest = read_manifest(config.data.dir)
        data_sha = sha256_file(Path(config.data.dir) / DATA_MANIFEST)
    return {
        "format": runs.FORMAT,
        "name": run_dir.name,
        "status": "running",
        "classes": setup.classes,
        "input_length": folds.train.length,
        "sampling_rate_hz": data_manifest.get("sampling_rate_hz"),
        "data": {
            "dir": config.data.dir,
            "split": config.data.split,
            "manifest_sha256": data_sha,
            "train_counts": folds.before,
            "resampled_counts": folds.after,
            "val_counts": folds.val.counts(),
            "val_records": folds.val_records,
            "validation": setup.validation,  # False: trained on the whole split (--folds)
            "input_range": runs.input_range(folds.train.x),  # predict's out-of-range check
        },
        "rhythm": setup.rhythm,
        "model": {"parameters": setup.parameters},
        "device": str(setup.device),
        "precision": setup.precision,
        "threads": setup.threads.choice.threads,
        "threads_setting": config.train.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "recipe": setup.recipe,
        "versions": _versions(),
        "tracking": tracking,
        "started": old_manifest.get("started", _now()),
        "best_epoch": state.best_epoch,
        "metrics": old_manifest.get("metrics", {}),
        # the final run of --folds keeps what the cross-validation recorded (crossval.py)
        **({"crossval": old_manifest["crossval"]} if "crossval" in old_manifest else {}),
    }


def start_run(
    config: HeartConfig,
    run_dir: Path,
    old_manifest: dict[str, Any],
    tracking_parent: str | None,
    config_base: Any,
) -> tuple[Any, dict[str, Any], str]:
    """Write config.toml and open the MLflow run: (tracker, the manifest's ``tracking``,
    config.toml's SHA-256). A resumed run keeps its MLflow run and parent."""
    from heartcli.tracking import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    config_sha = runs.save_run_config(config, run_dir, config_base)
    old_tracking = old_manifest.get("tracking") or {}
    tracker = Tracker(
        config, run_dir, parent=tracking_parent, run_id=old_tracking.get("run_id") or None
    )
    tracking = {
        "uri": tracker.uri,
        "run_id": tracker.run_id,
        "parent_run_id": tracking_parent or old_tracking.get("parent_run_id"),
    }
    return tracker, tracking, config_sha


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


def keep_best(setup: Setup, state: LoopState, epoch: int, cm: np.ndarray, run_dir: Path) -> bool:
    """Save the weights when validation macro-F1 improved; count epochs since it did."""
    val_f1 = macro_f1_from_confusion(cm)
    if val_f1 > state.best_metric:
        state.best_metric, state.best_epoch, state.since_best = val_f1, epoch, 0
        state.best_cm = cm.tolist()
        runs.save_weights(setup.eval_model, run_dir / runs.WEIGHTS)
        return True
    state.since_best += 1
    return False


def keep_last(setup: Setup, state: LoopState, epoch: int, run_dir: Path) -> bool:
    """Without a validation fold, the weights of the last epoch are the run's."""
    state.best_epoch, state.since_best = epoch, 0
    runs.save_weights(setup.eval_model, run_dir / runs.WEIGHTS)
    return True


def save_checkpoint(setup: Setup, state: LoopState, run_dir: Path, elapsed: float) -> None:
    """history.csv and checkpoint.pt after an epoch: what a resume starts from."""
    write_text(run_dir / runs.HISTORY, _history_csv(state.history, setup.classes))
    runs.save_checkpoint(
        {
            "model": setup.model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.schedule.state_dict(),
            "epoch": state.epoch,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "since_best": state.since_best,
            "best_cm": state.best_cm,
            "history": state.history,
            "seconds": elapsed,
            "recipe": setup.recipe,
            "ema": setup.ema.state_dict() if setup.ema is not None else None,
        },
        run_dir / runs.CHECKPOINT,
    )


def stop_reason(config: HeartConfig, state: LoopState, elapsed: float) -> str | None:
    """Why the run stops after this epoch, or None to go on."""
    cfg = config.train
    if state.since_best >= cfg.patience and state.epoch < cfg.epochs:
        return "early_stopped"
    if cfg.max_minutes and elapsed >= cfg.max_minutes * 60 and state.epoch < cfg.epochs:
        return "budget"
    return None


def finish(
    config: HeartConfig,
    run_dir: Path,
    setup: Setup,
    state: LoopState,
    manifest: dict[str, Any],
    tracker: Any,
    seconds: float,
) -> None:
    """Curves, the best epoch's validation confusion, the final manifest, tracking."""
    from heartcli import plots

    history = state.history
    if history:
        plots.curves(history, run_dir / runs.CURVES)
    if state.best_cm is not None:
        plots.confusion(
            np.asarray(state.best_cm),
            setup.classes,
            run_dir / runs.VAL_CONFUSION,
            f"{run_dir.name}: validation, epoch {state.best_epoch}",
        )
    best_row = next((h for h in history if h["epoch"] == state.best_epoch), {})
    manifest.update(
        {
            "status": state.status,
            "best_epoch": state.best_epoch,
            "epochs_run": len(history),
            "metrics": {
                k: v
                for k, v in best_row.items()
                if (k.startswith("val_") or k == "train_loss") and math.isfinite(v)
            },
            "finished": _now(),
            "timings": {
                "seconds": round(seconds, 2),
                "seconds_to_best": round(state.seconds_to_best(), 2),
                "seconds_per_epoch": round(
                    float(np.mean([h["seconds"] for h in history])) if history else 0.0, 3
                ),
                "train_beats_per_s": round(
                    float(np.mean([h["beats_per_s"] for h in history])) if history else 0.0, 1
                ),
            },
        }
    )
    runs.write_manifest(run_dir, manifest)
    tracker.set_tags({"heart.best_epoch": str(state.best_epoch)})
    if state.best_metric >= 0:
        tracker.log_metrics({"best_val_macro_f1": state.best_metric}, step=state.best_epoch)
    for name in (runs.CONFIG, runs.CURVES, runs.VAL_CONFUSION, runs.HISTORY, runs.MANIFEST):
        tracker.log_artifact(run_dir / name)
    tracker.end(state.status)


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

    tracker, tracking, config_sha = start_run(
        config, run_dir, old_manifest, tracking_parent, config_base
    )
    manifest = start_manifest(config, run_dir, setup, folds, state, old_manifest, tracking)
    manifest["config_sha256"] = config_sha  # a resume refuses a config.toml that differs
    runs.write_manifest(run_dir, manifest)
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
        _failed(run_dir, manifest, tracker)
        raise

    seconds = state.elapsed(started)
    try:
        finish(config, run_dir, setup, state, manifest, tracker, seconds)
    except BaseException:
        _failed(run_dir, manifest, tracker)
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


def check_resumed_data(run_dir: Path, old_manifest: dict[str, Any], folds: Folds) -> None:
    """A resumed run trains on data of its own classes and beat length."""
    if (
        old_manifest["classes"] != folds.train.classes
        or old_manifest["input_length"] != folds.train.length
    ):
        raise DataError(f"{run_dir}: the data's classes or beat length differ from the run's")


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


def _failed(run_dir: Path, manifest: dict[str, Any], tracker: Any) -> None:
    """Record a run that failed (a full disk included) as "failed", never left "running"."""
    runs.mark_failed(run_dir, manifest)
    with contextlib.suppress(Exception):
        tracker.end("failed")


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
        tracker.log_metrics(
            {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_macro_f1": val_f1,
                "lr": lr,
                "beats_per_s": info.beats_per_s,
                **{f"val_recall_{k}": v for k, v in info.val_recall.items()},
            },
            step=epoch,
        )
        progress.done(f"epoch {epoch}", info)
        setup.threads.recheck()  # "auto": another program may have started or stopped
        if on_epoch is not None and on_epoch(info):
            state.status = "pruned"
            return
        reason = stop_reason(config, state, state.elapsed(started))
        if reason:
            state.status = reason
            return
