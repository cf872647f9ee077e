"""`heart train --folds K`: K-fold cross-validation on the training split.

The records of the inter-patient training split (DS1) go into K folds
(:func:`heartcli.training.folds.record_folds`: no record on both sides, every fold holds S
and V beats); any other split (``random`` is beat-level by protocol) is cut into stratified
beat-level folds (:func:`heartcli.training.oof.stratified_folds`). Each fold trains a run
on the other folds' beats and validates on its own (``RUN/folds/fold-<i>``, early stopping
and best epoch as any run); the validation figures of each fold's best epoch are its
macro-F1 and the AAMI SVEB and VEB Se and +P. The mean best epoch (rounded, at least 1) is
the number of epochs of the final run, which trains on the whole training split with no
validation fold (no early stopping; the last epoch's weights) into ``RUN`` itself, whose
manifest keeps the per-fold figures under ``crossval``. With ``[train] final = "ensemble"``
there is no final run: the K fold models become ``RUN``'s model, one ensemble averaging
their probabilities (:mod:`heartcli.model.ensemble`).

Each fold's best weights then score its own fold: the out-of-fold predictions
(``RUN/oof.npz``) cover the training split once, and ``crossval.oof`` holds their macro-F1
with its bootstrap 95% interval (:mod:`heartcli.training.oof`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from heartcli import tracking
from heartcli.config import MAX_FOLDS, HeartConfig
from heartcli.data.dataset import BeatSet, load_split
from heartcli.errors import HeartError, UsageError
from heartcli.metrics import aami, macro_f1_from_confusion
from heartcli.model import runs
from heartcli.progress import Progress
from heartcli.training.folds import check_rhythm
from heartcli.training.loop import TrainResult, train
from heartcli.training.oof import fold_groups, fold_proba, oof_figures, record_wise, save_oof

FOLDS_DIR = "folds"
FIGURES = ("macro_f1", "sveb_se", "sveb_ppv", "veb_se", "veb_ppv")


@dataclass
class FoldResult:
    fold: int
    records: list[str]  # the validation records
    best_epoch: int
    figures: dict[str, float]
    run_dir: str
    seconds: float
    beats: int = 0  # validation beats

    def summary(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "val_records": self.records,
            "val_beats": self.beats,
            "best_epoch": self.best_epoch,
            **{k: round(v, 4) for k, v in self.figures.items()},
            "run_dir": self.run_dir,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class CrossValResult:
    folds: list[FoldResult]
    epochs: int  # of the final run: the folds' mean best epoch
    final: TrainResult
    seconds: float  # folds and final run together
    oof: dict[str, Any] | None = None  # the out-of-fold figures (oof_figures)

    def figures(self) -> dict[str, dict[str, float]]:
        """Mean and standard deviation (over folds) of every figure and the best epoch."""
        out: dict[str, dict[str, float]] = {}
        for key in (*FIGURES, "best_epoch"):
            values = np.array(
                [f.best_epoch if key == "best_epoch" else f.figures[key] for f in self.folds]
            )
            out[key] = {
                "mean": round(float(values.mean()), 4),
                "std": round(float(values.std()), 4),
            }
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "folds": [f.summary() for f in self.folds],
            "figures": self.figures(),
            "final_epochs": self.epochs,
            "oof": self.oof,
            "seconds": round(self.seconds, 1),
            "final": self.final.summary(),
        }


def fold_figures(cm: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Macro-F1 and, where the classes are AAMI's, SVEB and VEB Se and +P (EC57 scoring)."""
    figures = {"macro_f1": macro_f1_from_confusion(cm)}
    scored = aami.scored_matrix(cm, classes) if aami.applies(classes) else None
    for row, name in aami.ROWS.items():
        part = aami.class_figures(scored, classes, name) if scored is not None else {}
        figures[f"{row.lower()}_se"] = float(part.get("se", 0.0))
        figures[f"{row.lower()}_ppv"] = float(part.get("ppv", 0.0))
    return figures


def check_crossval(config: HeartConfig, k: int | None = None) -> None:
    """What K-fold cross-validation cannot do: a fold count out of 2..MAX_FOLDS, a schedule
    that follows validation (the final run has none), ``[train] val_records`` (each fold is
    the validation in turn: the key would be ignored)."""
    if k is not None and not 2 <= k <= MAX_FOLDS:
        raise UsageError(f"--folds {k}: use 2 to {MAX_FOLDS} folds")
    if config.train.scheduler == "plateau":
        raise UsageError(
            'train.scheduler "plateau" follows validation, and the final run of --folds has '
            'none; use "cosine", "onecycle" or "none"'
        )
    if config.train.val_records:
        raise UsageError(
            "train.val_records picks the validation records of one run; cross-validation "
            "validates on every fold in turn and would ignore it: set it to 0"
        )


def check_fold_data(config: HeartConfig, k: int) -> None:
    """Whether the training split can be cut into ``k`` folds (2 to MAX_FOLDS, every fold
    holding every class, or S and V records): checked on the data before any fold (or
    trial) trains."""
    if not 2 <= k <= MAX_FOLDS:
        raise UsageError(f"--folds {k}: use 2 to {MAX_FOLDS} folds")
    beats = load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)
    fold_groups(config.data.split, beats, k, config.train.seed)


def cross_validate(
    config: HeartConfig,
    run_dir: Path,
    k: int,
    *,
    progress: Progress | None = None,
    config_base: Any = None,
    beats: BeatSet | None = None,
    tracking_parent: str | None = None,
    track_folds: bool = True,
    resume: bool = False,
) -> CrossValResult:
    """K record-wise folds, then the final run on the whole training split into ``run_dir``.

    ``progress`` is told each run as :func:`heartcli.training.train` tells it, after a
    ``stage`` line that names the fold (its validation records) or the final run.
    The final run is an MLflow run (nested under ``tracking_parent`` when given) that also
    gets the folds' figures as ``cv_*`` metrics; the fold runs are MLflow runs of their own
    unless ``track_folds`` is off (a search trial: one MLflow run per trial).

    ``RUN/manifest.json`` exists from before the first fold (status "running", its
    ``crossval`` naming K), so a cross-validation stopped anywhere (Ctrl-C, SIGTERM, an
    error, SIGKILL) keeps its finished folds, and ``resume`` continues it: finished folds
    are read back, an interrupted one is resumed, then the final run is continued as the
    final run it is (no validation fold) and the figures are written.
    """
    progress = progress or Progress()
    check_crossval(config, k)
    if beats is None:
        beats = load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)
    check_rhythm(config, beats)
    groups = fold_groups(config.data.split, beats, k, config.train.seed)
    if not resume:
        start_crossval(config, run_dir, k, beats, config_base)
    try:
        return _folds_then_final(
            config, run_dir, beats, groups, progress, config_base, (tracking_parent, track_folds)
        )
    except KeyboardInterrupt:
        _mark(run_dir, "interrupted")
        raise
    except BaseException:
        _mark(run_dir, "failed")
        raise


def _folds_then_final(
    config: HeartConfig,
    run_dir: Path,
    beats: BeatSet,
    groups: list[np.ndarray],
    progress: Progress,
    config_base: Any,
    tracked: tuple[str | None, bool],
) -> CrossValResult:
    """The folds (each trained, resumed or read back), the out-of-fold figures, then the
    final run or the fold ensemble; the figures into the run's manifest and MLflow."""
    started = time.perf_counter()
    tracking_parent, track_folds = tracked
    k = len(groups)
    fold_config = config.model_copy(deep=True)
    fold_config.tracking.enabled = config.tracking.enabled and track_folds
    probas: list[np.ndarray] = []
    results = [
        run_fold(fold_config, run_dir, beats, (i, k), val, progress, config_base, probas)
        for i, val in enumerate(groups, start=1)
    ]
    save_oof(run_dir, groups, beats.y, probas)
    oof = oof_figures(beats.y[np.concatenate(groups)], np.concatenate(probas), beats.classes)
    epochs = max(1, round(float(np.mean([f.best_epoch for f in results]))))
    if config.train.final == "ensemble":
        final = fold_ensemble(config, run_dir, results, oof, config_base)
    else:
        final_config = config.model_copy(deep=True)
        final_config.train.epochs = epochs
        progress.stage("final run: the whole training split, no validation")
        final = train(
            final_config,
            run_dir,
            resume=True,  # over the cross-validation's manifest, from its checkpoint if any
            progress=progress,
            config_base=config_base,
            train_data=beats,
            validation=False,
            tracking_parent=tracking_parent,
        )
    result = CrossValResult(results, epochs, final, time.perf_counter() - started, oof)
    manifest = runs.read_run_manifest(run_dir)
    manifest["crossval"] = {
        "k": k,
        "final": config.train.final,
        **{key: v for key, v in result.summary().items() if key != "final"},
    }
    runs.write_manifest(run_dir, manifest)
    tracking.log_crossval(manifest, result.figures())
    final.manifest = manifest
    return result


def start_crossval(
    config: HeartConfig, run_dir: Path, k: int, beats: BeatSet, config_base: Any
) -> None:
    """The run's manifest before its first fold: a run folder `heart train --resume`
    continues however the cross-validation stops (the final run replaces it)."""
    manifest: dict[str, Any] = {
        "format": runs.FORMAT,
        "name": run_dir.name,
        "status": "running",
        "classes": list(beats.classes),
        "input_length": beats.length,
        "data": {"dir": config.data.dir, "split": config.data.split, "validation": False},
        "crossval": {"k": k, "final": config.train.final},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_sha256": runs.save_run_config(config, run_dir, config_base),
    }
    runs.write_manifest(run_dir, manifest)


def _mark(run_dir: Path, status: str) -> None:
    """The run's manifest says ``status`` where it still says "running" (never raises)."""
    with contextlib.suppress(Exception):
        manifest = runs.read_run_manifest(run_dir)
        if manifest.get("status") == "running":
            manifest["status"] = status
            runs.write_manifest(run_dir, manifest)


def resume_hint(run_dir: Path) -> str:
    done = sum(
        1 for d in sorted((run_dir / FOLDS_DIR).glob("fold-*")) if finished_run(d) is not None
    )
    return (
        f"{run_dir} keeps its finished folds ({done}); continue it with "
        f"`heart train --resume {run_dir}`"
    )


def finished_run(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run that ended on its own (completed, early stopped, budget)."""
    try:
        manifest = runs.read_run_manifest(run_dir)
    except HeartError:
        return None
    return manifest if manifest.get("status") in runs.FINISHED else None


def run_fold(
    config: HeartConfig,
    run_dir: Path,
    beats: BeatSet,
    of: tuple[int, int],
    val: np.ndarray,
    progress: Progress,
    config_base: Any,
    probas: list[np.ndarray] | None = None,
) -> FoldResult:
    """Train on every beat outside fold ``fold`` of ``k`` (``of``), validate on its beats
    (whole records for the inter-patient split); its best weights' probabilities on the
    fold go to ``probas``. A fold that finished before (a resumed cross-validation) is read
    back; one that was stopped is resumed."""
    t0 = time.perf_counter()
    fold, k = of
    mask = np.ones(len(beats), dtype=bool)
    mask[val] = False
    val_beats = beats.subset(val)
    records = sorted({str(r) for r in val_beats.record}) if record_wise(config.data.split) else []
    fold_dir = run_dir / FOLDS_DIR / f"fold-{fold}"
    where = f"records {', '.join(records)}" if records else "stratified beats"
    done = finished_run(fold_dir)
    if done is not None:
        progress.stage(f"fold {fold} of {k}: validation {where} (finished before)")
        best_epoch, cm = int(done["best_epoch"]), runs.load_checkpoint(fold_dir).get("best_cm")
        seconds = float((done.get("timings") or {}).get("seconds") or 0.0)
    else:
        progress.stage(f"fold {fold} of {k}: validation {where}")
        result = train(
            config,
            fold_dir,
            resume=(fold_dir / runs.MANIFEST).exists(),
            progress=progress,
            config_base=config_base,
            train_data=beats.subset(np.flatnonzero(mask)),
            val_data=val_beats,
        )
        if result.status == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C in a fold stops the whole cross-validation
        best_epoch, cm, seconds = result.best_epoch, result.best_confusion, 0.0
    if probas is not None:
        probas.append(fold_proba(fold_dir, val_beats))
    return FoldResult(
        fold,
        records,
        best_epoch,
        fold_figures(np.asarray(cm, dtype=np.int64), list(beats.classes)),
        str(fold_dir),
        seconds + time.perf_counter() - t0,
        len(val_beats),
    )


def fold_ensemble(
    config: HeartConfig,
    run_dir: Path,
    folds: list[FoldResult],
    oof: dict[str, Any],
    config_base: Any,
) -> TrainResult:
    """``[train] final = "ensemble"``: the fold models (best epochs) as ``RUN``'s model."""
    from heartcli.config import dumps
    from heartcli.model.ensemble import write_ensemble

    t0 = time.perf_counter()
    manifest = write_ensemble(
        run_dir,
        [(f"fold-{f.fold}", Path(f.run_dir)) for f in folds],
        dumps(config, config_base),
        source=f"{len(folds)}-fold cross-validation (each fold's best epoch)",
        scores={"oof_macro_f1": oof["macro_f1"], "oof_macro_f1_ci95": oof["macro_f1_ci95"]},
    )
    return TrainResult(
        run_dir=run_dir,
        status="completed",
        best_epoch=0,
        best_metric=float(oof["macro_f1"]),
        epochs_run=0,
        history=[],
        seconds=time.perf_counter() - t0,
        parameters=int(manifest["model"]["parameters"]),
        manifest=manifest,
    )
