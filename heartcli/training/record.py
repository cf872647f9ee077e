"""The run record: what a run folder holds, and when each file is written.

- at the start (:func:`start_record`): ``config.toml`` (resolved, commented, runnable), the
  MLflow run (kept across a resume) and ``manifest.json`` with status "running";
- at each better epoch (:func:`keep_best`, or every epoch without validation,
  :func:`keep_last`): ``model.safetensors``;
- after every epoch (:func:`save_checkpoint`, :func:`log_epoch`): ``history.csv``,
  ``checkpoint.pt`` (what ``--resume`` starts from) and the epoch's MLflow metrics;
- at the end (:func:`finish`): ``curves.png``, the best epoch's validation confusion, the
  final manifest (status, best epoch, metrics, timings) and the MLflow artifacts; a run
  that fails is recorded as "failed" (:func:`record_failure`), never left "running".

:func:`open_run` reads a run back for ``--resume`` (or refuses a folder that holds one).
The layout and file names are :mod:`heartcli.model.runs`'.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartcli import __version__
from heartcli.config import HeartConfig
from heartcli.data.dataset import MANIFEST as DATA_MANIFEST
from heartcli.data.dataset import read_manifest
from heartcli.errors import DataError, UsageError
from heartcli.io import sha256_file, write_text
from heartcli.metrics import macro_f1_from_confusion
from heartcli.model import runs
from heartcli.training.epoch import EpochInfo
from heartcli.training.folds import Folds
from heartcli.training.setup import LoopState, Setup

# --------------------------------------------------------------------------- helpers


def history_csv(history: list[dict[str, Any]], classes: list[str]) -> str:
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


# --------------------------------------------------------------------------- the start


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


def check_resumed_data(run_dir: Path, old_manifest: dict[str, Any], folds: Folds) -> None:
    """A resumed run trains on data of its own classes and beat length."""
    if (
        old_manifest["classes"] != folds.train.classes
        or old_manifest["input_length"] != folds.train.length
    ):
        raise DataError(f"{run_dir}: the data's classes or beat length differ from the run's")


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


def start_record(
    config: HeartConfig,
    run_dir: Path,
    setup: Setup,
    folds: Folds,
    state: LoopState,
    old_manifest: dict[str, Any],
    tracking_parent: str | None,
    config_base: Any,
) -> tuple[Any, dict[str, Any]]:
    """config.toml, the MLflow run and manifest.json (status "running"): (tracker, manifest)."""
    tracker, tracking, config_sha = start_run(
        config, run_dir, old_manifest, tracking_parent, config_base
    )
    manifest = start_manifest(config, run_dir, setup, folds, state, old_manifest, tracking)
    manifest["config_sha256"] = config_sha  # a resume refuses a config.toml that differs
    runs.write_manifest(run_dir, manifest)
    return tracker, manifest


# --------------------------------------------------------------------------- every epoch


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
    write_text(run_dir / runs.HISTORY, history_csv(state.history, setup.classes))
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


def log_epoch(tracker: Any, info: EpochInfo) -> None:
    """The epoch's figures to MLflow (and TensorBoard), at step ``epoch``."""
    tracker.log_metrics(
        {
            "train_loss": info.train_loss,
            "val_loss": info.val_loss,
            "val_macro_f1": info.val_macro_f1,
            "lr": info.lr,
            "beats_per_s": info.beats_per_s,
            **{f"val_recall_{k}": v for k, v in info.val_recall.items()},
        },
        step=info.epoch,
    )


# --------------------------------------------------------------------------- the end


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


def record_failure(run_dir: Path, manifest: dict[str, Any], tracker: Any) -> None:
    """Record a run that failed (a full disk included) as "failed", never left "running"."""
    runs.mark_failed(run_dir, manifest)
    with contextlib.suppress(Exception):
        tracker.end("failed")
