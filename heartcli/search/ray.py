"""`heart tune --backend ray`: the same space through Ray Tune, to tune across machines.

Ray Tune's HyperOptSearch runs TPE over the very hyperopt space the in-process backend uses,
a ConcurrencyLimiter caps parallel trials at ``[search] concurrency`` (``--jobs``), and the
same ``[search]`` keys pick Ray's own scheduler: ``pruner = "asha"`` is ``ASHAScheduler``
(grace period ``min_epochs``, ``reduction_factor``, max_t the most epochs a trial can run),
``"median"`` is ``MedianStoppingRule`` (grace period ``warmup_epochs``, ``min_trials``
samples required), ``"none"`` is FIFO. A trial a scheduler stops ends "pruned" in its
manifest, search.json and MLflow. Each trial is the same
``trial-NNN`` run folder, a nested MLflow run under one parent run. On a cluster, point
``[train] runs_dir`` at a shared folder and ``[tracking] uri`` at an MLflow server that every
node can reach; the default sqlite file only works on one machine.

Ray is an optional extra (``pip install 'heartcli[ray]'``); nothing imports it otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from heartcli.config import SearchConfig
from heartcli.errors import ConfigError, HeartError, UsageError
from heartcli.search.report import build_report, write_report
from heartcli.search.state import (
    SearchReporter,
    SearchResult,
    TrialRecord,
    best_of,
    failure,
    history,
    link_best,
    mark_ended,
    max_trial_epochs,
    maximize,
    metric_value,
    read_state,
    save_state,
    search_config,
    trial_config,
)
from heartcli.search.trial import shared_folds
from heartcli.search_space import flatten, parse_space, to_hyperopt


def claim_trial_dir(search_dir: Path) -> tuple[int, Path]:
    """The next free ``trial-NNN`` folder, claimed with an atomic mkdir (safe across workers
    on a shared folder)."""
    number = 1
    while True:
        path = search_dir / f"trial-{number:03d}"
        try:
            path.mkdir()
            return number, path
        except FileExistsError:
            number += 1


def _writable(beats: Any) -> Any:
    """Ray's object store hands out read-only arrays; torch wants writable ones."""
    import dataclasses

    import numpy as np

    if beats is None:
        return None
    return dataclasses.replace(beats, x=np.array(beats.x), y=np.array(beats.y))


def _trainable(
    sample: dict[str, Any],
    *,
    search_dir: str,
    config_text: str,
    parent_run_id: str | None,
    tracking_uri: str | None = None,
    cwd: str | None = None,
    train_data: Any = None,
    val_data: Any = None,
) -> None:
    """One Ray trial: a `heart train` run that reports the metric after every epoch."""
    # Ray starts a trial in its own folder: work from the driver's folder (relative paths in
    # the config), and log to the driver's MLflow store, not a new one in the trial folder.
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import tomlkit
    from ray import tune

    from heartcli.config import load_config
    from heartcli.training import TrainingDiverged, train

    folder = Path(search_dir)
    config = load_config(folder / "search.toml")
    s = config.search
    space = parse_space(s.space)
    values = flatten(space, sample)
    number, run_dir = claim_trial_dir(folder)
    try:
        cfg = trial_config(config, values, number)
    except ConfigError as exc:
        raise HeartError(f"trial-{number:03d}: {'; '.join(exc.problems)}") from None
    if cfg.train.threads == 0:
        cfg.train.threads = 1  # one core per trial; Ray schedules the rest

    stopped = False

    def on_epoch(info: Any) -> bool:
        nonlocal stopped
        if info.epoch >= cfg.train.epochs:
            return False  # the last epoch: the final report below carries it, never a stop
        value = metric_value(s.metric, vars(info))
        try:
            tune.report({s.metric: value, "epoch": info.epoch, "trial": number, "final": False})
        except SystemExit:
            # Ray's scheduler stops a trial with sys.exit() inside report: end it as pruned
            # (manifest, MLflow), not as a failure.
            stopped = True
            return True
        return False

    try:
        result = train(
            cfg,
            run_dir,
            on_epoch=on_epoch,
            tracking_parent=parent_run_id,
            train_data=_writable(train_data),
            val_data=_writable(val_data),
            config_base=tomlkit.parse(config_text),
        )
    except (TrainingDiverged, UsageError, RuntimeError, MemoryError) as exc:
        # The number leads the message: a trial that fails reports nothing else.
        raise HeartError(f"trial-{number:03d}: {failure(exc)}") from None
    if stopped:
        return  # Ray wants no more reports from a trial it stopped
    best_row = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    tune.report(
        {
            s.metric: metric_value(s.metric, best_row),
            "epoch": result.epochs_run,
            "trial": number,
            "final": True,
            "heart_status": result.status,
            "best_epoch": result.best_epoch,
        }
    )


def _error_reason(error: BaseException) -> tuple[int | None, str]:
    """(trial number, reason) of a Ray trial's error."""
    import re

    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    text = next((line for line in reversed(lines) if "trial-" in line), lines[-1] if lines else "")
    m = re.search(r"trial-(\d+): (.*)", text)
    if m:
        return int(m.group(1)), m.group(2).strip()
    return None, text.strip() or type(cause).__name__


def _from_folder(record: TrialRecord, metric: str) -> None:
    """Curve, best epoch and metric of a trial from its history.csv (the kept epoch)."""
    rows = history(Path(record.run_dir))
    values = [metric_value(metric, row) for row in rows]
    record.curve = [v for v in values if v is not None]
    scored = [
        (float(r["val_macro_f1"]), int(r["epoch"]), v)
        for r, v in zip(rows, values, strict=True)
        if v is not None
    ]
    if scored:
        best = max(scored, key=lambda t: (t[0], -t[1]))
        record.best_epoch, record.metric = best[1], best[2]
        record.epochs_run = len(rows)


def scheduler(s: SearchConfig, max_epochs: int, mode: str) -> Any:
    """Ray Tune's own scheduler for ``[search] pruner`` and its keys."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if s.pruner == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            metric=s.metric,
            mode=mode,
            max_t=max_epochs + 1,  # never stop at max_t: the trial's final report comes after
            grace_period=min(s.min_epochs, max_epochs),
            reduction_factor=s.reduction_factor,
        )
    if s.pruner == "median":
        return MedianStoppingRule(
            time_attr="epoch",
            metric=s.metric,
            mode=mode,
            grace_period=s.warmup_epochs,
            min_samples_required=s.min_trials,
        )
    return FIFOScheduler()


def _collect(grid: Any, search_dir: Path, s: SearchConfig, space: Any) -> list[TrialRecord]:
    """Trial records from Ray's results (numbers from the trials' own reports)."""
    records: list[TrialRecord] = []
    unnumbered: list[TrialRecord] = []
    for i in range(len(grid)):
        res = grid[i]
        metrics = res.metrics or {}
        record = TrialRecord(0, {}, flatten(space, dict(res.config or {})))
        record.seconds = float(metrics.get("time_total_s") or 0.0)
        number: int | None
        if res.error is not None:
            number, record.reason = _error_reason(res.error)
            record.status = "failed"
        else:
            number = int(metrics["trial"])
            final = metrics.get("final")
            record.status = str(metrics.get("heart_status", "completed")) if final else "pruned"
        if number is None:
            unnumbered.append(record)
            continue
        record.number = number
        record.run_dir = str(search_dir / f"trial-{number:03d}")
        if record.status == "pruned":
            record.reason = f"stopped by Ray's {s.pruner} scheduler"
            mark_ended(Path(record.run_dir), "pruned", record.reason)
        elif record.status == "failed":
            mark_ended(Path(record.run_dir), "failed", record.reason)
        if record.status != "failed":
            _from_folder(record, s.metric)
        records.append(record)
    for record in unnumbered:
        record.number = max((r.number for r in records), default=0) + 1
        records.append(record)
    return sorted(records, key=lambda r: r.number)


def _searcher(expr: Any, s: SearchConfig, mode: str) -> Any:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    return ConcurrencyLimiter(
        # The space is given here, so HyperOptSearch ignores TuneConfig's metric: set it too.
        HyperOptSearch(
            space=expr,
            metric=s.metric,
            mode=mode,
            random_state_seed=s.seed,
            n_initial_points=s.startup_trials,
        ),
        max_concurrent=s.concurrency,
    )


def _tuner(
    search_dir: Path,
    config: Any,
    config_text: str,
    parent: Any,
    folds: tuple[Any, Any],
    evals: int,
) -> Any:
    """Ray Tune's Tuner for the search: the trainable, the searcher and the scheduler."""
    from ray import tune

    s = config.search
    space = parse_space(s.space)
    mode = "max" if maximize(s.metric) else "min"
    resources: dict[str, float] = {"cpu": 1, "gpu": 1 if config.train.device == "cuda" else 0}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            search_dir=str(search_dir),
            config_text=config_text,
            parent_run_id=parent.run_id,
            tracking_uri=parent.uri,
            cwd=os.getcwd(),
            train_data=folds[0],
            val_data=folds[1],
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(to_hyperopt(space, config.model.conv_layers), s, mode),
            scheduler=scheduler(s, max_trial_epochs(config, space), mode),
            num_samples=evals,
            time_budget_s=s.max_minutes * 60 if s.max_minutes > 0 else None,
        ),
        run_config=tune.RunConfig(name="ray", storage_path=str(search_dir), verbose=0),
    )


def run_ray(
    search_dir: Path, *, address: str | None = None, reporter: SearchReporter | None = None
) -> SearchResult:
    """Run the search in ``search_dir`` (made by new_search) through Ray Tune."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--backend ray needs Ray Tune; install it with `pip install 'heartcli[ray]'`"
        ) from None
    from heartcli.tracking import Tracker

    started = time.perf_counter()
    search_dir = Path(search_dir).resolve()
    state = read_state(search_dir)
    config = search_config(search_dir)
    config_text = (search_dir / "search.toml").read_text(encoding="utf-8")
    s = config.search
    space = parse_space(s.space)
    evals = int(state["evals"])

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    parent = Tracker(config, search_dir)
    state["parent_run_id"] = parent.run_id
    train_data, val_data = shared_folds(config, space)
    if reporter is not None:
        reporter.start(
            {
                "search_dir": str(search_dir),
                "evals": evals,
                "done": 0,
                "metric": s.metric,
                "keys": space.keys,
                "tracking_run_id": parent.run_id,
                "jobs": s.concurrency,
            }
        )
    tuner = _tuner(search_dir, config, config_text, parent, (train_data, val_data), evals)
    status = "completed"
    records: list[TrialRecord] = []
    try:
        # Ray Tune writes its own progress to stdout: keep stdout for heart's result.
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        records = _collect(grid, search_dir, s, space)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        result = SearchResult(
            search_dir,
            s.metric,
            records,
            tracking_run_id=parent.run_id,
            keys=space.keys,
            jobs=s.concurrency,
        )
        _wrap_up(search_dir, state, config, result, parent, reporter, status)
        result.seconds = time.perf_counter() - started
    return result


def _wrap_up(
    search_dir: Path,
    state: dict[str, Any],
    config: Any,
    result: SearchResult,
    parent: Any,
    reporter: SearchReporter | None,
    status: str,
) -> None:
    records = result.records
    save_state(search_dir, state, records)
    if reporter is not None:
        maximise = maximize(config.search.metric)
        for n, record in enumerate(records):
            reporter.trial_end(record, best_of(records[: n + 1], maximise))
    result.best, result.best_config, result.notes = link_best(search_dir, config, records)
    with contextlib.suppress(Exception):
        result.report = build_report(search_dir)
        write_report(search_dir, result.report)
    metric = config.search.metric
    if result.best is not None and result.best.metric is not None:
        parent.log_metrics({f"best_{metric}": result.best.metric}, step=result.best.number)
        parent.set_tags({"heart.best_trial": f"trial-{result.best.number:03d}"})
    parent.set_tags(
        {
            "heart.trials": str(len(records)),
            "heart.backend": "ray",
            "heart.pruner": config.search.pruner,
        }
    )
    for name in ("search.json", "best.toml", "report.json", "report.png"):
        parent.log_artifact(search_dir / name)
    parent.end(status)
