"""The training loop behind `heart train` (and every `heart tune` trial).

One function, :func:`train`, reads top to bottom: load the training split (never the test
split), carve out validation, resample the training fold, build the model, then per epoch:
shuffle, step through whole-tensor batches, validate, schedule the LR, keep the best
weights, checkpoint, log, and stop early when validation macro-F1 stops improving.

Reproducible on CPU: the weights come from ``torch.manual_seed(seed)``, and every epoch
reseeds its shuffle and dropout from ``seed + epoch``, so a resumed run continues exactly
as an uninterrupted one would.
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
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from heartcli import __version__, runs
from heartcli.config import HeartConfig, TrainConfig
from heartcli.dataset import BeatSet, load_split, read_manifest
from heartcli.errors import DataError, HeartError, UsageError
from heartcli.evaluate import confusion_matrix, macro_f1_from_confusion
from heartcli.io import sha256_file, write_text
from heartcli.model import build_model, count_parameters
from heartcli.resample import class_weights, resample

EVAL_BATCH = 2048
PROGRESS_EVERY = 10  # batches between progress callbacks: cheap, but not free


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
    best: bool = False

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
    status: str  # completed, early_stopped, pruned, interrupted
    best_epoch: int
    best_metric: float
    epochs_run: int
    history: list[dict[str, Any]]
    seconds: float
    parameters: int = 0
    tracking_run_id: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "best_epoch": self.best_epoch,
            "best_val_macro_f1": self.best_metric,
            "epochs_run": self.epochs_run,
            "parameters": self.parameters,
            "seconds": round(self.seconds, 2),
            "tracking_run_id": self.tracking_run_id,
            "history": self.history,
        }


class TrainProgress(Protocol):
    """What the CLI's progress display gets told; every call is optional work for it."""

    def start(self, summary: dict[str, Any]) -> None: ...
    def start_epoch(self, epoch: int, steps: int) -> None: ...
    def advance(self, steps: int) -> None: ...
    def end_epoch(self, info: EpochInfo) -> None: ...


@dataclass
class Folds:
    """The training fold (resampled) and the validation fold, with the counts along the way."""

    train: BeatSet
    val: BeatSet
    before: dict[str, int]
    after: dict[str, int]
    weights: np.ndarray | None
    val_records: list[str]


# --------------------------------------------------------------------------- data


def carve_validation(
    beats: BeatSet, fraction: float, seed: int, *, by_record: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): stratified by class, or whole records when ``by_record``."""
    rng = np.random.default_rng(seed)
    records = np.asarray(beats.record, dtype=object)
    if by_record and len(beats) and all(str(r) for r in records):
        return _carve_records(beats, fraction, rng)
    val: list[np.ndarray] = []
    for c in range(len(beats.classes)):
        idx = np.flatnonzero(beats.y == c)
        if len(idx) < 2:
            continue
        take = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        val.append(rng.permutation(idx)[:take])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    mask = np.ones(len(beats), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _carve_records(
    beats: BeatSet, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Whole records into validation until it holds ``fraction`` of the beats.

    Of 50 shuffles, keep the one whose two folds both cover the most classes (then the one
    closest to the wanted size), so rare classes stay on both sides where the data allows.
    """
    names, codes = np.unique(np.asarray(beats.record, dtype=str), return_inverse=True)
    k = len(beats.classes)
    per_record = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(per_record, (codes, beats.y), 1)
    total = per_record.sum(axis=0)
    wanted = fraction * len(beats)
    best: tuple[tuple[int, float], np.ndarray] | None = None
    for _ in range(50):
        order = rng.permutation(len(names))
        sizes = np.cumsum(per_record[order].sum(axis=1))
        cut = int(np.searchsorted(sizes, wanted)) + 1
        cut = min(max(cut, 1), len(names) - 1)
        chosen = order[:cut]
        val_counts = per_record[chosen].sum(axis=0)
        covered = int(((val_counts > 0) & (total - val_counts > 0)).sum())
        score = (covered, -abs(sizes[cut - 1] - wanted))
        if best is None or score > best[0]:
            best = (score, chosen)
    assert best is not None
    in_val = np.isin(codes, best[1])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def prepare_folds(
    config: HeartConfig,
    train_data: BeatSet | None = None,
    val_data: BeatSet | None = None,
) -> Folds:
    """The training split, minus a validation fold, with [resample] applied to what is left."""
    if train_data is None:
        train_data = load_split(config.data.dir, config.data.split, "train")
    if not np.all(np.isfinite(train_data.x)):
        row = int(np.argwhere(~np.isfinite(train_data.x))[0][0])
        raise DataError(f"training data: row {row} has a NaN or infinite value; repair the data")
    if val_data is None:
        by_record = config.data.split == "inter-patient"
        tr, va = carve_validation(
            train_data, config.train.val_fraction, config.train.seed, by_record=by_record
        )
        val_data = train_data.subset(va)
        train_data = train_data.subset(tr)
    if len(val_data) == 0 or len(train_data) == 0:
        raise UsageError(
            f"train.val_fraction: {len(train_data) + len(val_data)} training beats leave "
            "an empty training or validation fold; use more data"
        )
    if val_data.length != train_data.length or val_data.classes != train_data.classes:
        raise DataError("validation data: beat length or classes differ from the training data")
    fold = resample(train_data, config.resample)
    val_records = sorted({str(r) for r in val_data.record if str(r)})
    return Folds(
        fold,
        val_data,
        train_data.counts(),
        fold.counts(),
        class_weights(train_data, config.resample),
        val_records,
    )


# --------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError('train.device: "cuda" is not available here; use "auto" or "cpu"')
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError('train.device: "mps" is not available here; use "auto" or "cpu"')
    return torch.device(name)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """Plateau watches validation macro-F1; OneCycle steps per batch; cosine per epoch."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=max(1, cfg.patience // 3)
        )
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
        )
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    device: torch.device,
    n_classes: int,
) -> tuple[float, np.ndarray]:
    """Validation loss and the confusion matrix."""
    model.eval()
    total = torch.zeros((), device=device)
    preds = []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH]).float()
            total += loss_fn(logits, y[start : start + EVAL_BATCH]) * len(logits)
            preds.append(logits.argmax(dim=1))
    y_pred = torch.cat(preds).cpu().numpy()
    cm = confusion_matrix(y.cpu().numpy(), y_pred, n_classes)
    return float(total.item()) / len(x), cm


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
        "best",
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


# --------------------------------------------------------------------------- the loop


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


def train(
    config: HeartConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    on_epoch: Callable[[EpochInfo], bool | None] | None = None,
    progress: TrainProgress | None = None,
    tracking_parent: str | None = None,
    train_data: BeatSet | None = None,
    val_data: BeatSet | None = None,
    config_base: Any = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir``; ``resume`` continues from its checkpoint.pt.

    ``on_epoch`` returning True stops the run (status "pruned"). ``train_data`` /
    ``val_data`` replace the split named by ``[data]`` (a tuner loads it once).
    ``config_base`` is the user's TOML document, whose comments config.toml keeps.
    """
    from heartcli.tracking import Tracker

    started = time.perf_counter()
    cfg = config.train
    run_dir = Path(run_dir)
    flush_subnormals()

    # A run folder holds one run: refuse to overwrite one unless resuming it.
    checkpoint: dict[str, Any] | None = None
    old_manifest: dict[str, Any] = {}
    if resume:
        old_manifest = runs.read_run_manifest(run_dir)
        checkpoint = runs.load_checkpoint(run_dir)
    elif (run_dir / runs.MANIFEST).exists():
        raise UsageError(
            f"{run_dir} already holds a run; pick another name or `heart train --resume {run_dir}`"
        )

    # Data: the training split only; validation is carved from it before resampling.
    folds = prepare_folds(config, train_data, val_data)
    classes, length = folds.train.classes, folds.train.length
    if resume and (old_manifest["classes"] != classes or old_manifest["input_length"] != length):
        raise DataError(f"{run_dir}: the data's classes or beat length differ from the run's")
    data_manifest: dict[str, Any] = {}
    data_sha = None
    with contextlib.suppress(DataError):
        data_manifest = read_manifest(config.data.dir)
        data_sha = sha256_file(Path(config.data.dir) / "manifest.json")

    # Model, before anything is written: a config that shrinks the beats fails here.
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = build_model(config.model, length, len(classes))
    parameters = count_parameters(model)
    device = pick_device(cfg.device)
    model.to(device)

    # Whole tensors in memory; a batch is one index into them.
    x_train = torch.from_numpy(np.ascontiguousarray(folds.train.x, dtype=np.float32)).to(device)
    y_train = torch.from_numpy(np.ascontiguousarray(folds.train.y, dtype=np.int64)).to(device)
    x_val = torch.from_numpy(np.ascontiguousarray(folds.val.x, dtype=np.float32)).to(device)
    y_val = torch.from_numpy(np.ascontiguousarray(folds.val.y, dtype=np.int64)).to(device)
    n_train = len(y_train)
    steps = max(1, math.ceil(n_train * cfg.steps_fraction / cfg.batch_size))
    weights = torch.from_numpy(folds.weights).to(device) if folds.weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)

    history: list[dict[str, Any]] = []
    best_metric, best_epoch, since_best, start_epoch = -1.0, 0, 0, 1
    best_cm: list[list[int]] | None = None
    seconds_before = 0.0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            if scheduler is not None and checkpoint.get("scheduler"):
                scheduler.load_state_dict(checkpoint["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DataError(
                f"{run_dir / runs.CHECKPOINT}: does not match config.toml ({type(exc).__name__}); "
                "resume with the run's own config"
            ) from None
        history = list(checkpoint["history"])
        best_metric = float(checkpoint["best_metric"])
        best_epoch = int(checkpoint["best_epoch"])
        since_best = int(checkpoint["since_best"])
        best_cm = checkpoint.get("best_cm")
        start_epoch = int(checkpoint["epoch"]) + 1
        seconds_before = float(checkpoint.get("seconds", 0.0))

    run_dir.mkdir(parents=True, exist_ok=True)
    config_sha = runs.save_run_config(config, run_dir, config_base)  # harden: issue 12
    old_tracking = old_manifest.get("tracking") or {}
    tracker = Tracker(
        config,
        run_dir,
        parent=tracking_parent,
        run_id=old_tracking.get("run_id") if resume else None,
    )
    manifest: dict[str, Any] = {
        "format": runs.FORMAT,
        "name": run_dir.name,
        "status": "running",
        "classes": classes,
        "input_length": length,
        "sampling_rate_hz": data_manifest.get("sampling_rate_hz"),
        "data": {
            "dir": config.data.dir,
            "split": config.data.split,
            "manifest_sha256": data_sha,
            "train_counts": folds.before,
            "resampled_counts": folds.after,
            "val_counts": folds.val.counts(),
            "val_records": folds.val_records,
            "input_range": runs.input_range(folds.train.x),  # harden: predict's range check
        },
        "config_sha256": config_sha,  # harden: resume refuses a changed config.toml
        "model": {"parameters": parameters},
        "device": str(device),
        "threads": threads,
        "versions": _versions(),
        "tracking": {
            "uri": tracker.uri,
            "run_id": tracker.run_id,
            "parent_run_id": tracking_parent or old_tracking.get("parent_run_id"),
        },
        "started": old_manifest.get("started", _now()),
        "best_epoch": best_epoch,
        "metrics": old_manifest.get("metrics", {}),
    }
    runs.write_manifest(run_dir, manifest)
    if progress is not None:
        progress.start(
            {
                "run_dir": str(run_dir),
                "parameters": parameters,
                "device": str(device),
                "threads": threads,
                "classes": classes,
                "train_counts": folds.before,
                "resampled_counts": folds.after,
                "val_counts": folds.val.counts(),
                "start_epoch": start_epoch,
                "epochs": cfg.epochs,
                "steps": steps,
            }
        )

    status = "completed"
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if since_best >= cfg.patience:
                status = "early_stopped"
                break
            # Shuffle and dropout are seeded per epoch: resuming replays the same epochs.
            torch.manual_seed(cfg.seed + epoch)
            order = torch.randperm(
                n_train, generator=torch.Generator().manual_seed(cfg.seed + epoch)
            )
            order = order.to(device)
            lr = optimizer.param_groups[0]["lr"]
            if progress is not None:
                progress.start_epoch(epoch, steps)

            # Train: forward, backward, step over whole-tensor batches.
            model.train()
            t0 = time.perf_counter()
            total_loss = torch.zeros((), device=device)
            seen = 0
            for step in range(steps):
                index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                if len(index) == 0:
                    break
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device):
                    loss = loss_fn(model(x_train[index]).float(), y_train[index])
                loss.backward()
                optimizer.step()
                if cfg.scheduler == "onecycle":
                    scheduler.step()
                total_loss += loss.detach() * len(index)
                seen += len(index)
                if progress is not None and (step + 1) % PROGRESS_EVERY == 0:
                    progress.advance(PROGRESS_EVERY)
            train_loss = float(total_loss.item()) / max(seen, 1)
            train_seconds = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise TrainingDiverged(
                    f"training diverged: the loss became {train_loss} in epoch {epoch}; "
                    "lower train.lr or check the data"
                )
            if progress is not None:
                progress.advance(steps % PROGRESS_EVERY)

            # Validate, then let the schedule react.
            val_loss, cm = _validate(model, x_val, y_val, loss_fn, device, len(classes))
            val_f1 = macro_f1_from_confusion(cm)
            support = cm.sum(axis=1)
            recall = {
                classes[i]: float(cm[i, i] / support[i]) for i in range(len(classes)) if support[i]
            }
            if cfg.scheduler == "plateau":
                scheduler.step(val_f1)
            elif cfg.scheduler == "cosine":
                scheduler.step()

            # Keep the best weights; count epochs without improvement for early stopping.
            improved = val_f1 > best_metric
            if improved:
                best_metric, best_epoch, since_best = val_f1, epoch, 0
                best_cm = cm.tolist()
                runs.save_weights(model, run_dir / runs.WEIGHTS)
            else:
                since_best += 1
            info = EpochInfo(
                epoch=epoch,
                epochs=cfg.epochs,
                train_loss=train_loss,
                val_loss=val_loss,
                val_macro_f1=val_f1,
                val_recall=recall,
                lr=lr,
                beats_per_s=seen / train_seconds if train_seconds > 0 else 0.0,
                seconds=time.perf_counter() - t0,
                best=improved,
            )
            history.append(info.row())
            write_text(run_dir / runs.HISTORY, _history_csv(history, classes))
            runs.save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "epoch": epoch,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "since_best": since_best,
                    "best_cm": best_cm,
                    "history": history,
                    "seconds": seconds_before + time.perf_counter() - started,
                },
                run_dir / runs.CHECKPOINT,
            )
            tracker.log_metrics(
                {
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_macro_f1": val_f1,
                    "lr": lr,
                    "beats_per_s": info.beats_per_s,
                    **{f"val_recall_{k}": v for k, v in recall.items()},
                },
                step=epoch,
            )
            if progress is not None:
                progress.end_epoch(info)
            if on_epoch is not None and on_epoch(info):
                status = "pruned"
                break
            if since_best >= cfg.patience and epoch < cfg.epochs:
                status = "early_stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException:
        manifest["status"] = "failed"
        runs.write_manifest(run_dir, manifest)
        tracker.end("failed")
        raise

    # Wrap up: curves, the best epoch's validation confusion, manifest, tracking.
    from heartcli import plots

    seconds = time.perf_counter() - started
    if history:
        plots.curves(history, run_dir / runs.CURVES)
    if best_cm is not None:
        plots.confusion(
            np.asarray(best_cm),
            classes,
            run_dir / "val_confusion.png",
            f"{run_dir.name}: validation, epoch {best_epoch}",
        )
    best_row = next((h for h in history if h["epoch"] == best_epoch), {})
    manifest.update(
        {
            "status": status,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "metrics": {
                k: v for k, v in best_row.items() if k.startswith("val_") or k == "train_loss"
            },
            "finished": _now(),
            "timings": {
                "seconds": round(seconds_before + seconds, 2),
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
    tracker.set_tags({"heart.best_epoch": str(best_epoch)})
    if best_metric >= 0:
        tracker.log_metrics({"best_val_macro_f1": best_metric}, step=best_epoch)
    for name in (runs.CONFIG, runs.CURVES, "val_confusion.png", runs.HISTORY, runs.MANIFEST):
        tracker.log_artifact(run_dir / name)
    tracker.end(status)
    return TrainResult(
        run_dir=run_dir,
        status=status,
        best_epoch=best_epoch,
        best_metric=max(best_metric, 0.0),
        epochs_run=len(history),
        history=history,
        seconds=seconds_before + seconds,  # every invocation's, as epochs_run counts every epoch
        parameters=parameters,
        tracking_run_id=tracker.run_id,
        manifest=manifest,
    )
