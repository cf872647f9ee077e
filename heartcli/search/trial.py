"""One trial of a search, for both backends: a `heart train` run (or ``heart train --folds
K`` with ``[search] folds`` and no ``refit``) of the trial's config, scored into its
:class:`TrialRecord`. With ``[search] refit`` the folds come after the rungs, for the top
trials only (search/refit.py).

:func:`run_trial` is the one trial runner. What differs between the backends is a
:class:`TrialHooks`: where the trial's data and folder come from, and what happens after
each epoch. A worker process of the hyperopt backend (workers.py) asks the search loop
whether to go on (:class:`AskParent`); a Ray trial hands its files to the driver and
reports to Ray Tune (ray_trial.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heartcli.config import HeartConfig
from heartcli.errors import ConfigError, HeartError
from heartcli.search.metric import history, metric_value
from heartcli.search.records import TrialRecord, failure, trial_config
from heartcli.search.spec import Search
from heartcli.search.trial_dir import clear_trial_dir, restart_trial_dir

# Keys that change the data or the validation fold: with one in the space, every trial
# loads and carves its own data instead of sharing one fold.
DATA_KEYS = ("train.val_fraction", "train.val_records", "train.seed")
# (trial number, epoch, epochs, the metric per epoch so far) -> True to stop the trial.
Ask = Callable[[int, int, int, list[float]], bool]


class TrialHooks:
    """What a backend adds to :func:`run_trial`; the defaults train in the trial folder of
    the search (cleared or resumed), with no data given and no question after an epoch."""

    # Exceptions of training that fail the trial (recorded; any other one propagates).
    failures: tuple[type[BaseException], ...] = (HeartError, OSError, RuntimeError, MemoryError)
    tracking_parent: str | None = None  # the search's MLflow run, for the trial's nested run
    tracking_uri: str | None = None

    def configure(self, cfg: HeartConfig) -> None:
        """Adjust the trial's config before it runs (threads, tracking)."""

    def data(self, cfg: HeartConfig) -> tuple[Any, Any]:
        """(training, validation) data the trial trains on; (None, None) loads its own."""
        return None, None

    def open(self, run_dir: Path) -> bool:
        """Ready the trial's folder: True to resume the run in it."""
        return clear_trial_dir(run_dir, self.tracking_uri, self.tracking_parent)

    def afresh(self, run_dir: Path) -> None:
        """Clear the trial's folder for a run that always starts from nothing (folds)."""
        restart_trial_dir(run_dir, self.tracking_uri, self.tracking_parent)

    def epoch(
        self, record: TrialRecord, info: Any, value: float | None, curve: list[float]
    ) -> bool:
        """An epoch ended (``value``: the metric, None when absent): True to stop."""
        return False

    def trained(self, result: Any) -> None:
        """Training returned ``result`` (a TrainResult, or a CrossValidation's final run)."""
        if result.status == "interrupted":
            raise KeyboardInterrupt

    def fail(self, record: TrialRecord, reason: str) -> None:
        """The trial failed: recorded here (a Ray trial raises instead)."""
        record.status, record.reason = "failed", reason


@dataclass
class AskParent(TrialHooks):
    """A worker's trial: the search's shared data, ``threads`` each, and after every
    epoch the search loop's answer (``ask``) whether to go on."""

    ask: Ask
    train_data: Any
    val_data: Any
    threads: int  # torch threads of one trial
    tracking_parent: str | None = None
    tracking_uri: str | None = None

    def configure(self, cfg: HeartConfig) -> None:
        cfg.train.threads = trial_threads(cfg.train.threads, self.threads)

    def data(self, cfg: HeartConfig) -> tuple[Any, Any]:
        return self.train_data, self.val_data

    def epoch(
        self, record: TrialRecord, info: Any, value: float | None, curve: list[float]
    ) -> bool:
        return self.ask(record.number, info.epoch, info.epochs, list(curve))


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


def shared_folds(search: Search) -> tuple[Any, Any]:
    """One training/validation fold for every trial (None, None when the space changes it);
    with ``[search] folds`` the whole training split (and None): each trial cuts its folds."""
    from heartcli.data.dataset import load_split
    from heartcli.training.folds import split_validation

    config = search.config
    if any(k.startswith("data.") or k in DATA_KEYS for k in search.space.keys):
        return None, None
    beats = load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)
    if config.search.folds and not config.search.refit:  # with refit: the folds come after
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


def _ended(record: TrialRecord, started: float | None = None) -> TrialRecord:
    if started is not None:
        record.seconds += time.perf_counter() - started
    record.ended_at = time.time()
    return record


def run_trial(search: Search, record: TrialRecord, run_dir: Path, hooks: TrialHooks) -> TrialRecord:
    """Train one trial in ``run_dir`` and score it into ``record``: its failures are
    recorded through ``hooks.fail``, never raised (but Ctrl-C: KeyboardInterrupt)."""
    from heartcli.training import train

    metric = search.metric
    record.run_dir = str(run_dir)
    record.started_at = time.time()
    started = time.perf_counter()
    try:
        cfg = trial_config(search.config, record.params, record.number)
    except ConfigError as exc:
        hooks.fail(record, "; ".join(exc.problems))
        return _ended(record)
    hooks.configure(cfg)
    try:
        train_data, val_data = hooks.data(cfg)
        resume = hooks.open(run_dir)
    except (HeartError, OSError) as exc:  # a link out of runs/, a folder that cannot go
        hooks.fail(record, failure(exc))
        return _ended(record)
    if cfg.search.folds and not cfg.search.refit:
        return _cross_validated(search, cfg, record, run_dir, hooks, train_data, started)
    curve = [v for v in (metric_value(metric, row) for row in history(run_dir)) if v is not None]

    def on_epoch(info: Any) -> bool:
        value = metric_value(metric, vars(info))
        curve.append(value if value is not None else math.nan)
        return hooks.epoch(record, info, value, curve)

    try:
        result = train(
            cfg,
            run_dir,
            resume=resume,
            on_epoch=on_epoch,
            tracking_parent=hooks.tracking_parent,
            train_data=train_data,
            val_data=val_data,
            config_base=search.document(),
        )
    except hooks.failures as exc:  # a full disk included
        hooks.fail(record, failure(exc))
        record.curve = curve
    else:
        hooks.trained(result)
        record.status = result.status
        _scored(record, metric, result)
    return _ended(record, started)


def _cross_validated(
    search: Search,
    cfg: HeartConfig,
    record: TrialRecord,
    run_dir: Path,
    hooks: TrialHooks,
    beats: Any,
    started: float,
) -> TrialRecord:
    """A ``[search] folds`` trial: ``heart train --folds K`` in the trial folder (always
    afresh), scored by the folds' mean macro-F1; one MLflow run (the final model's)."""
    from heartcli.training.crossval import cross_validate

    try:
        hooks.afresh(run_dir)
        result = cross_validate(
            cfg,
            run_dir,
            cfg.search.folds,
            config_base=search.document(),
            beats=beats,
            tracking_parent=hooks.tracking_parent,
            track_folds=False,
        )
    except hooks.failures as exc:
        hooks.fail(record, failure(exc))
    else:
        hooks.trained(result.final)
        record.status = "completed"
        record.metric = result.figures()["macro_f1"]["mean"]
        record.curve = [record.metric]
        record.best_epoch = result.epochs
        record.epochs_run = result.final.epochs_run
        record.tracking_run_id = result.final.tracking_run_id
    return _ended(record, started)
