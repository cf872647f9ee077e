"""One trial of a search: a `heart train` run in ``trial-NNN`` that asks, after every epoch,
whether to go on. It runs in a worker process (see workers.py) or a Ray trial."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from heartcli.config import HeartConfig
from heartcli.config.space import Space
from heartcli.errors import ConfigError, HeartError
from heartcli.search.state import (
    DATA_KEYS,
    TrialRecord,
    clear_trial_dir,
    failure,
    history,
    metric_value,
    restart_trial_dir,
    trial_config,
)

# (trial number, epoch, epochs, the metric per epoch so far) -> True to stop the trial.
Ask = Callable[[int, int, int, list[float]], bool]


@dataclass
class TrialSetup:
    """What every trial of a search shares."""

    search_dir: Path
    config: HeartConfig
    config_text: str
    parent_run_id: str | None
    tracking_uri: str | None
    train_data: Any
    val_data: Any
    threads: int  # torch threads of one trial


def trial_threads(setting: int | str, per_trial: int) -> int | str:
    """A trial's ``[train] threads``: at most its share of the cores (``cores // jobs``).

    ``auto`` stays ``auto`` when one trial has the whole machine (it then follows the load
    as `heart train` does); with several trials at once each gets its share, fixed.
    """
    from heartcli.threads import usable_cpus

    per_trial = max(1, per_trial)
    if setting == "auto":
        return "auto" if per_trial >= usable_cpus() else per_trial
    return min(int(setting), per_trial) if setting else per_trial


def shared_folds(config: HeartConfig, space: Space) -> tuple[Any, Any]:
    """One training/validation fold for every trial (None, None when the space changes it);
    with ``[search] folds`` the whole training split (and None): each trial cuts its folds."""
    from heartcli.data.dataset import load_split
    from heartcli.training.folds import split_validation

    if any(k.startswith("data.") or k in DATA_KEYS for k in space.keys):
        return None, None
    beats = load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)
    if config.search.folds:
        return beats, None
    train_idx, val_idx = split_validation(config, beats)  # [train] val_records too
    return beats.subset(train_idx), beats.subset(val_idx)


def _scored(record: TrialRecord, metric: str, result: Any) -> None:
    """Fill a trained trial's figures from its TrainResult."""
    record.best_epoch = result.best_epoch
    record.epochs_run = result.epochs_run
    record.tracking_run_id = result.tracking_run_id
    record.curve = [
        v for v in (metric_value(metric, row) for row in result.history) if v is not None
    ]
    best_row = next((h for h in result.history if h["epoch"] == result.best_epoch), None)
    record.metric = metric_value(metric, best_row) if best_row else None
    if record.metric is None:
        record.status, record.reason = "failed", "no epoch finished"


def run_trial(setup: TrialSetup, record: TrialRecord, ask: Ask) -> TrialRecord:
    """Train one trial; failures are recorded, never raised (but Ctrl-C: KeyboardInterrupt)."""
    from heartcli.training import train

    metric = setup.config.search.metric
    run_dir = setup.search_dir / f"trial-{record.number:03d}"
    record.run_dir = str(run_dir)
    record.started_at = time.time()
    started = time.perf_counter()
    try:
        cfg = trial_config(setup.config, record.params, record.number)
    except ConfigError as exc:
        record.status, record.reason = "failed", "; ".join(exc.problems)
        record.ended_at = time.time()
        return record
    cfg.train.threads = trial_threads(cfg.train.threads, setup.threads)
    try:
        resume = clear_trial_dir(run_dir, setup.tracking_uri, setup.parent_run_id)
    except (HeartError, OSError) as exc:  # a link out of runs/, a folder that cannot go
        record.status, record.reason = "failed", failure(exc)
        record.ended_at = time.time()
        return record
    curve = [v for v in (metric_value(metric, row) for row in history(run_dir)) if v is not None]

    def on_epoch(info: Any) -> bool:
        value = metric_value(metric, vars(info))
        curve.append(value if value is not None else math.nan)
        return ask(record.number, info.epoch, info.epochs, list(curve))

    if cfg.search.folds:
        return _cross_validated(setup, cfg, record, run_dir, started)
    try:
        result = train(
            cfg,
            run_dir,
            resume=resume,
            on_epoch=on_epoch,
            tracking_parent=setup.parent_run_id,
            train_data=setup.train_data,
            val_data=setup.val_data,
            config_base=tomlkit.parse(setup.config_text),
        )
    except (HeartError, OSError, RuntimeError, MemoryError) as exc:  # a full disk included
        record.status, record.reason = "failed", failure(exc)
        record.curve = curve
    else:
        if result.status == "interrupted":
            raise KeyboardInterrupt
        record.status = result.status
        _scored(record, metric, result)
    record.seconds += time.perf_counter() - started
    record.ended_at = time.time()
    return record


def _cross_validated(
    setup: TrialSetup, cfg: HeartConfig, record: TrialRecord, run_dir: Path, started: float
) -> TrialRecord:
    """A ``[search] folds`` trial: ``heart train --folds K`` in the trial folder (always
    afresh), scored by the folds' mean macro-F1; one MLflow run (the final model's)."""
    from heartcli.training.crossval import cross_validate

    try:
        restart_trial_dir(run_dir, setup.tracking_uri, setup.parent_run_id)
        result = cross_validate(
            cfg,
            run_dir,
            cfg.search.folds,
            config_base=tomlkit.parse(setup.config_text),
            beats=setup.train_data,
            tracking_parent=setup.parent_run_id,
            track_folds=False,
        )
    except (HeartError, OSError, RuntimeError, MemoryError) as exc:
        record.status, record.reason = "failed", failure(exc)
    else:
        if result.final.status == "interrupted":
            raise KeyboardInterrupt
        record.status = "completed"
        record.metric = result.figures()["macro_f1"]["mean"]
        record.curve = [record.metric]
        record.best_epoch = result.epochs
        record.epochs_run = result.final.epochs_run
        record.tracking_run_id = result.final.tracking_run_id
    record.seconds += time.perf_counter() - started
    record.ended_at = time.time()
    return record
