"""`heart tune --backend ray`: the same space through Ray Tune, to tune across machines.

Ray Tune's HyperOptSearch runs TPE over the very hyperopt space the in-process backend uses,
a ConcurrencyLimiter caps parallel trials at ``[search] concurrency``, and ASHA stops poor
trials early (its rungs start after ``warmup_epochs``). Each trial is the same
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

from heartcli.errors import ConfigError, HeartError, UsageError
from heartcli.search import (
    Context,
    SearchReporter,
    SearchResult,
    TrialRecord,
    _best,
    _failure,
    _save,
    _shared_folds,
    finalize,
    maximize,
    metric_value,
    read_state,
    search_config,
    trial_config,
)
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

    def on_epoch(info: Any) -> bool:
        value = metric_value(s.metric, vars(info))
        tune.report({s.metric: value, "epoch": info.epoch, "trial": number, "final": False})
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
        raise HeartError(f"trial-{number:03d}: {_failure(exc)}") from None
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


def _mark_pruned(run_dir: Path) -> None:
    """A trial ASHA stopped was killed mid-run: mark its folder and MLflow run as pruned."""
    from heartcli import runs

    try:
        manifest = runs.read_run_manifest(run_dir)
    except HeartError:
        return
    if manifest.get("status") != "running":
        return
    manifest["status"] = "pruned"
    runs.write_manifest(run_dir, manifest)
    tracking = manifest.get("tracking") or {}
    if tracking.get("uri") and tracking.get("run_id"):
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking["uri"])
            client.set_tag(tracking["run_id"], "heart.status", "pruned")
            client.set_terminated(tracking["run_id"], status="FINISHED")
        except Exception:  # the run folder is what matters; tracking is best effort here
            pass


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
    from heartcli.search import _history

    rows = _history(Path(record.run_dir))
    values = [metric_value(metric, row) for row in rows]
    record.curve = [v for v in values if v is not None]
    scored = [
        (float(r["val_macro_f1"]), int(r["epoch"]), v) for r, v in zip(rows, values, strict=True)
    ]
    if scored:
        best = max(scored, key=lambda t: (t[0], -t[1]))
        record.best_epoch, record.metric = best[1], best[2]
        record.epochs_run = len(rows)


def run_ray(
    search_dir: Path, *, address: str | None = None, reporter: SearchReporter | None = None
) -> SearchResult:
    """Run the search in ``search_dir`` (made by new_search) through Ray Tune."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.hyperopt import HyperOptSearch
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
    expr = to_hyperopt(space, config.model.conv_layers)
    mode = "max" if maximize(s.metric) else "min"
    evals = int(state["evals"])

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    parent = Tracker(config, search_dir)
    state["parent_run_id"] = parent.run_id
    train_data, val_data = _shared_folds(config, space)
    if reporter is not None:
        reporter.start(
            {
                "search_dir": str(search_dir),
                "evals": evals,
                "done": 0,
                "metric": s.metric,
                "keys": space.keys,
                "tracking_run_id": parent.run_id,
            }
        )
    searcher = ConcurrencyLimiter(
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
    max_epochs = config.train.epochs
    if "train.epochs" in space.keys:
        param = space.param("train.epochs")
        if param is not None and param.dist is not None:
            max_epochs = int(max(float(a) for a in param.dist.args[:2]))
    if s.max_epochs:
        max_epochs = min(max_epochs, s.max_epochs)
    max_epochs = max(1, max_epochs)
    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric=s.metric,
        mode=mode,
        max_t=max_epochs + 1,  # never stop at max_t: the trial's final report comes after
        grace_period=min(max(1, s.warmup_epochs), max_epochs),
    )
    resources: dict[str, float] = {"cpu": 1, "gpu": 1 if config.train.device == "cuda" else 0}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            search_dir=str(search_dir),
            config_text=config_text,
            parent_run_id=parent.run_id,
            tracking_uri=parent.uri,
            cwd=os.getcwd(),
            train_data=train_data,
            val_data=val_data,
        ),
        resources,
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=evals,
            time_budget_s=s.max_minutes * 60 if s.max_minutes > 0 else None,
        ),
        run_config=tune.RunConfig(name="ray", storage_path=str(search_dir), verbose=0),
    )
    status = "completed"
    records: list[TrialRecord] = []
    try:
        # Ray Tune writes its own progress to stdout: keep stdout for heart's result.
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        unnumbered: list[TrialRecord] = []
        for i in range(len(grid)):
            res = grid[i]
            metrics = res.metrics or {}
            record = TrialRecord(0, {}, flatten(space, dict(res.config or {})))
            record.seconds = float(metrics.get("time_total_s") or 0.0)
            if res.error is not None:
                number, record.reason = _error_reason(res.error)
                record.status = "failed"
            else:
                number = int(metrics["trial"])
                record.status = (
                    str(metrics.get("heart_status", "completed"))
                    if metrics.get("final")
                    else "pruned"
                )
            if number is None:
                unnumbered.append(record)
                continue
            record.number = number
            record.run_dir = str(search_dir / f"trial-{number:03d}")
            if record.status != "failed":
                if record.status == "pruned":
                    record.reason = "stopped by ASHA"
                    _mark_pruned(Path(record.run_dir))
                _from_folder(record, s.metric)
            records.append(record)
        for record in unnumbered:
            record.number = max((r.number for r in records), default=0) + 1
            records.append(record)
        records.sort(key=lambda r: r.number)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        _save(search_dir, state, records)
        ctx = Context(
            search_dir, config, config_text, parent.run_id, None, None, None, reporter, []
        )
        result = SearchResult(
            search_dir, s.metric, records, None, None, None, 0.0, parent.run_id, keys=space.keys
        )
        if reporter is not None:
            for record in records:
                reporter.trial_end(
                    record, _best(records[: records.index(record) + 1], mode == "max")
                )
        finalize(ctx, records, result)
        if result.best is not None and result.best.metric is not None:
            parent.log_metrics({f"best_{s.metric}": result.best.metric}, step=result.best.number)
            parent.set_tags({"heart.best_trial": f"trial-{result.best.number:03d}"})
        parent.set_tags({"heart.trials": str(len(records)), "heart.backend": "ray"})
        parent.end(status)
        result.seconds = time.perf_counter() - started
    return result
