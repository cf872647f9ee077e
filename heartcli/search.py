"""`heart tune`: hyperopt TPE over ``[search.space]``, one run folder per trial, resumable.

A search lives in ``runs/NAME/``: ``search.toml`` (the resolved config it runs, comments
kept), ``search.json`` (every trial, written atomically after each one and before each
starts), ``trial-NNN/`` (a full `heart train` run folder per trial), and at the end
``best`` (a link to the best trial's folder), ``best.toml`` (its config, runnable by
`heart train --config`) and ``runs/best`` (a link to the latest search's best trial).

Determinism across resume: TPE is driven one trial at a time, with the seed of trial ``n``
derived from ``([search] seed, n)``; the history it sees is rebuilt from search.json. So a
resumed search suggests the same points as one that was never interrupted. Nothing is
unpickled: the state is JSON.

Pruning is the median stopping rule: after ``warmup_epochs``, once ``min_trials`` trials
have run their course (completed or early-stopped), a trial whose best metric so far at
epoch ``k`` is worse than the median of those trials' best-so-far at epoch ``k`` (their
last value when they stopped earlier) is stopped and recorded as pruned. It is never
applied at a trial's last epoch.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tomlkit

from heartcli import config as config_mod
from heartcli.config import HeartConfig, dumps, load_config
from heartcli.errors import ConfigError, DataError, HeartError, UsageError
from heartcli.io import read_json, write_json, write_text
from heartcli.search_space import Space, apply, flatten, parse_space, to_hyperopt

STATE = "search.json"
CONFIG = "search.toml"
BEST = "best"
BEST_CONFIG = "best.toml"
FORMAT = "heart-search/1"
DONE = ("completed", "early_stopped", "pruned", "stopped")  # finished with a metric
# The median stopping rule compares with trials that ran their course (as Ray's
# MedianStoppingRule and Optuna's MedianPruner do): not pruned or cut-off ones.
REFERENCE = ("completed", "early_stopped")
# Keys that change the data or the validation fold: with one in the space, every trial
# loads and carves its own data instead of sharing one fold.
DATA_KEYS = ("train.val_fraction", "train.seed")


@dataclass
class TrialRecord:
    """One trial as search.json keeps it."""

    number: int  # 1-based; the folder is trial-NNN
    vals: dict[str, list[Any]]  # hyperopt's labels -> [value] or [] (inactive branch)
    params: dict[str, Any]  # config key -> sampled value
    status: str = "running"  # running, completed, early_stopped, pruned, stopped, failed
    metric: float | None = None  # the objective at the kept (best) epoch
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    reason: str = ""
    run_dir: str = ""
    curve: list[float] = field(default_factory=list)  # the metric per epoch
    tracking_run_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in DONE

    def loss(self, maximize: bool) -> float | None:
        """What TPE minimises; None for a failed trial."""
        if self.status == "failed" or self.metric is None:
            return None
        return -self.metric if maximize else self.metric


class SearchReporter(Protocol):
    """What the CLI's live table gets told."""

    def start(self, summary: dict[str, Any]) -> None: ...
    def trial_start(self, record: TrialRecord, evals: int) -> None: ...
    def epoch(self, record: TrialRecord, epoch: int, epochs: int, value: float) -> None: ...
    def trial_end(self, record: TrialRecord, best: TrialRecord | None) -> None: ...


# --------------------------------------------------------------------------- the metric


def maximize(metric: str) -> bool:
    return not metric.endswith("loss")


def metric_value(metric: str, row: dict[str, Any]) -> float | None:
    """The metric from one history row (or EpochInfo fields), None when absent."""
    if metric in row and row[metric] not in ("", None):
        return float(row[metric])
    if metric.startswith("val_recall_"):
        recall = row.get("val_recall")
        if isinstance(recall, dict) and metric.removeprefix("val_recall_") in recall:
            return float(recall[metric.removeprefix("val_recall_")])
    return None


def running_best(curve: list[float], maximise: bool) -> list[float]:
    out: list[float] = []
    for v in curve:
        out.append(v if not out else (max(out[-1], v) if maximise else min(out[-1], v)))
    return out


class MedianStopper:
    """The median stopping rule over the finished trials' learning curves."""

    def __init__(self, curves: Iterable[list[float]], warmup: int, min_trials: int, maximise: bool):
        self.curves = [running_best(c, maximise) for c in curves if c]
        self.warmup = warmup
        self.min_trials = min_trials
        self.maximise = maximise

    def median_at(self, epoch: int) -> float | None:
        """Median of the finished trials' best-so-far at ``epoch`` (their last, if shorter)."""
        if len(self.curves) < self.min_trials:
            return None
        return statistics.median(c[min(epoch, len(c)) - 1] for c in self.curves)

    def should_stop(self, curve: list[float]) -> bool:
        epoch = len(curve)
        if epoch <= self.warmup or not curve:
            return False
        median = self.median_at(epoch)
        if median is None:
            return False
        best = running_best(curve, self.maximise)[-1]
        return best < median if self.maximise else best > median


# --------------------------------------------------------------------------- TPE


def trial_seed(seed: int, number: int) -> int:
    """The TPE seed of trial ``number``: fixed by (search seed, number), whatever ran before."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class Suggester:
    """hyperopt TPE, one trial at a time, with its history rebuilt from plain records."""

    def __init__(self, space: Space, fixed_layers: int, seed: int, startup_trials: int):
        from hyperopt import Trials
        from hyperopt.base import Domain

        logging.getLogger("hyperopt").setLevel(logging.WARNING)
        self.space = space
        self.expr = to_hyperopt(space, fixed_layers)
        self.domain = Domain(lambda _: 0.0, self.expr)
        self.trials = Trials()
        self.seed = seed
        self.startup_trials = startup_trials

    def add(self, number: int, vals: dict[str, list[Any]], loss: float | None) -> None:
        """Tell TPE a finished trial; ``loss`` None is a failure (STATUS_FAIL)."""
        from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK

        tid = number - 1
        misc = {
            "tid": tid,
            "cmd": self.domain.cmd,
            "workdir": self.domain.workdir,
            "idxs": {label: [tid] if v else [] for label, v in vals.items()},
            "vals": {label: list(v) for label, v in vals.items()},
        }
        result = {"status": STATUS_FAIL} if loss is None else {"status": STATUS_OK, "loss": loss}
        docs = self.trials.new_trial_docs([tid], [None], [result], [misc])
        docs[0]["state"] = JOB_STATE_DONE
        self.trials.insert_trial_docs(docs)
        self.trials.refresh()

    def suggest(self, number: int) -> dict[str, list[Any]]:
        """hyperopt's vals (label -> [value] / []) of trial ``number``."""
        from functools import partial

        from hyperopt import tpe

        algo = partial(tpe.suggest, n_startup_jobs=self.startup_trials)
        docs = algo([number - 1], self.domain, self.trials, trial_seed(self.seed, number))
        vals = docs[0]["misc"]["vals"]
        return {label: [_plain(v) for v in values] for label, values in vals.items()}

    def values(self, vals: dict[str, list[Any]]) -> dict[str, Any]:
        """Config key -> value of a trial's vals."""
        from hyperopt import space_eval

        point = {label: v[0] for label, v in vals.items() if v}
        return flatten(self.space, space_eval(self.expr, point))


# --------------------------------------------------------------------------- state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_state(search_dir: Path) -> dict[str, Any]:
    path = search_dir / STATE
    if not search_dir.is_dir():
        raise UsageError(f"{search_dir}: no such search folder; start one with `heart tune`")
    if not path.exists():
        raise DataError(f"{search_dir}: not a heart search ({STATE} missing)")
    state = read_json(path, "the search cannot be resumed; start a new one")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a heart search state ({FORMAT})")
    return state


def _records(state: dict[str, Any]) -> list[TrialRecord]:
    return [TrialRecord(**t) for t in state.get("trials", [])]


def _save(search_dir: Path, state: dict[str, Any], records: list[TrialRecord]) -> None:
    state["trials"] = [asdict(r) for r in records]
    state["updated"] = _now()
    write_json(search_dir / STATE, state)


def _best(records: list[TrialRecord], maximise: bool) -> TrialRecord | None:
    scored = [r for r in records if r.finished and r.metric is not None]
    if not scored:
        return None
    # Ties go to the earlier trial.
    return sorted(scored, key=lambda r: (-(r.metric or 0.0) if maximise else r.metric, r.number))[0]


# --------------------------------------------------------------------------- starting


def new_search(config: HeartConfig, name: str | None = None, config_base: Any = None) -> Path:
    """Create ``runs/NAME`` with the search's config and an empty state; nothing runs yet."""
    if not config.search.space:
        raise UsageError(
            "search.space: empty; add search.space entries, e.g. "
            '"train.lr" = {loguniform = [1e-5, 1e-2]} (see examples/exp.toml)'
        )
    name = name or datetime.now().strftime("tune-%Y%m%d-%H%M%S")
    if "/" in name or "\\" in name or name in (".", "..", BEST):
        raise UsageError(f"--name {name!r}: a search name is one folder name (and not {BEST!r})")
    search_dir = Path(config.train.runs_dir) / name
    if search_dir.exists():
        raise UsageError(
            f"{search_dir} already exists; choose another --name or continue it with "
            f"`heart tune --resume {search_dir}`"
        )
    parse_space(config.search.space)  # validated by the loader too; this cannot fail here
    search_dir.mkdir(parents=True)
    write_text(search_dir / CONFIG, dumps(config, config_base))
    write_json(
        search_dir / STATE,
        {
            "format": FORMAT,
            "name": name,
            "created": _now(),
            "updated": _now(),
            "evals": config.search.evals,
            "parent_run_id": None,
            "trials": [],
        },
    )
    return search_dir


def search_config(search_dir: Path) -> HeartConfig:
    try:
        return load_config(search_dir / CONFIG)
    except ConfigError as exc:
        raise DataError(f"{search_dir / CONFIG}: not a valid config ({exc.problems[0]})") from None


# --------------------------------------------------------------------------- one trial


@dataclass
class Context:
    """What every trial of a search shares."""

    search_dir: Path
    config: HeartConfig
    config_text: str
    parent_run_id: str | None
    train_data: Any
    val_data: Any
    deadline: float | None
    reporter: SearchReporter | None
    finished_curves: list[list[float]]
    tracking_uri: str | None = None


def trial_config(config: HeartConfig, values: dict[str, Any], number: int) -> HeartConfig:
    """The base config with a trial's values; an impossible combination is a ConfigError."""
    data = apply(config.to_dict(), values)
    data["search"]["space"] = {}
    cap = config.search.max_epochs
    if cap and data["train"]["epochs"] > cap:
        data["train"]["epochs"] = cap
    return config_mod._validate(data, source=f"trial {number}", lines={})


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.csv"
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _prepare_dir(run_dir: Path, uri: str | None, parent_run_id: str | None) -> bool:
    """True to resume the trial's run folder; a folder that cannot be resumed is cleared."""
    from heartcli import runs

    if not run_dir.exists():
        return False
    if (run_dir / runs.CHECKPOINT).exists() and (run_dir / runs.MANIFEST).exists():
        with contextlib.suppress(DataError):
            runs.read_run_manifest(run_dir)
            return True
    _drop_tracking(uri, parent_run_id, run_dir)
    shutil.rmtree(run_dir)
    return False


def _drop_tracking(uri: str | None, parent_run_id: str | None, run_dir: Path) -> None:
    """Delete the MLflow runs of a trial folder that starts afresh (it gets a new run).

    Found by parent and name, not through the folder's manifest: a kill can land after the
    run was created and before the manifest names it.
    """
    if not (uri and parent_run_id):
        return
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):  # best effort: a stale run is only clutter
        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_run_id)
        stale = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and tags.mlflow.runName = '{run_dir.name}'",
        )
        for run in stale:
            client.delete_run(run.info.run_id)


def _failure(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate" in text:
        return f"out of memory: {text}"
    if isinstance(exc, HeartError):
        return text
    return f"{type(exc).__name__}: {text}"


def run_trial(ctx: Context, record: TrialRecord) -> TrialRecord:
    """Train one trial into ``trial-NNN``; failures are recorded, never raised (but Ctrl-C)."""
    from heartcli.training import TrainingDiverged, train

    s = ctx.config.search
    maximise = maximize(s.metric)
    run_dir = ctx.search_dir / f"trial-{record.number:03d}"
    record.run_dir = str(run_dir)
    started = time.perf_counter()
    try:
        cfg = trial_config(ctx.config, record.params, record.number)
    except ConfigError as exc:
        record.status, record.reason = "failed", "; ".join(exc.problems)
        return record
    resume = _prepare_dir(run_dir, ctx.tracking_uri, ctx.parent_run_id)
    curve = [v for v in (metric_value(s.metric, row) for row in _history(run_dir)) if v is not None]
    stopper = MedianStopper(ctx.finished_curves, s.warmup_epochs, s.min_trials, maximise)
    out_of_time = False

    def on_epoch(info: Any) -> bool:
        nonlocal out_of_time
        value = metric_value(s.metric, vars(info))
        curve.append(value if value is not None else math.nan)
        if ctx.reporter is not None:
            ctx.reporter.epoch(record, info.epoch, info.epochs, curve[-1])
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            out_of_time = True
            return True
        if info.epoch >= info.epochs:  # the last epoch: nothing left to save by stopping
            return False
        return s.median_stopping and stopper.should_stop(curve)

    base = tomlkit.parse(ctx.config_text)
    try:
        result = train(
            cfg,
            run_dir,
            resume=resume,
            on_epoch=on_epoch,
            tracking_parent=ctx.parent_run_id,
            train_data=ctx.train_data,
            val_data=ctx.val_data,
            config_base=base,
        )
    except (TrainingDiverged, UsageError, RuntimeError, MemoryError) as exc:
        record.status, record.reason = "failed", _failure(exc)
        record.seconds = time.perf_counter() - started
        record.curve = curve
        return record
    if result.status == "interrupted":
        raise KeyboardInterrupt
    record.status = "stopped" if out_of_time else result.status
    if record.status == "stopped":
        record.reason = "the search ran out of time (max_minutes)"
    elif record.status == "pruned":
        record.reason = f"below the median at epoch {result.epochs_run}"
    record.best_epoch = result.best_epoch
    record.epochs_run = result.epochs_run
    record.seconds = time.perf_counter() - started
    record.tracking_run_id = result.tracking_run_id
    record.curve = [
        v for v in (metric_value(s.metric, row) for row in result.history) if v is not None
    ]
    best_row = next((h for h in result.history if h["epoch"] == result.best_epoch), None)
    record.metric = metric_value(s.metric, best_row) if best_row else None
    if record.metric is None:
        record.status, record.reason = "failed", "no epoch finished"
    return record


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    search_dir: Path
    metric: str
    records: list[TrialRecord]
    best: TrialRecord | None
    best_config: Path | None
    stopped: str | None  # why it ended before evals: "max_minutes", or None
    seconds: float
    tracking_run_id: str | None
    notes: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the space's keys, in order

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "search_dir": str(self.search_dir),
            "metric": self.metric,
            "trials": len(self.records),
            "status_counts": counts,
            "best": asdict(self.best) if self.best else None,
            "best_dir": str(self.search_dir / BEST) if self.best else None,
            "best_config": str(self.best_config) if self.best_config else None,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
            "tracking_run_id": self.tracking_run_id,
            "notes": self.notes,
            "records": [asdict(r) for r in self.records],
        }


def _shared_folds(config: HeartConfig, space: Space) -> tuple[Any, Any]:
    """One training/validation fold for every trial (None, None when the space changes it)."""
    from heartcli.dataset import load_split
    from heartcli.training import carve_validation

    if any(k.startswith("data.") or k in DATA_KEYS for k in space.keys):
        return None, None
    beats = load_split(config.data.dir, config.data.split, "train")
    train_idx, val_idx = carve_validation(
        beats,
        config.train.val_fraction,
        config.train.seed,
        by_record=config.data.split == "inter-patient",
    )
    return beats.subset(train_idx), beats.subset(val_idx)


def _link(link: Path, target: str) -> bool:
    """Point ``link`` at ``target`` (relative) atomically; False when a real folder is there."""
    if link.exists() and not link.is_symlink():
        return False
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def _best_toml(ctx: Context, best: TrialRecord, name: str, metric: str) -> str:
    cfg = trial_config(ctx.config, best.params, best.number)
    text = dumps(cfg, tomlkit.parse(ctx.config_text))
    params = "\n".join(f"#   {k} = {v}" for k, v in best.params.items())
    header = (
        f"# Best trial of search {name}: trial-{best.number:03d}, {metric} {best.metric:.4f}\n"
        f"# (epoch {best.best_epoch} of {best.epochs_run}). Train it again with\n"
        f"#   heart train --config {ctx.search_dir / BEST_CONFIG} --name {name}-best\n"
        f"# Sampled values:\n{params}\n\n"
    )
    return header + text


def finalize(ctx: Context, records: list[TrialRecord], result: SearchResult) -> None:
    """Links to the best trial and its config, written when at least one trial scored."""
    s = ctx.config.search
    best = _best(records, maximize(s.metric))
    result.best = best
    if best is None:
        result.notes.append("no trial finished with a score; nothing to link as best")
        return
    name = ctx.search_dir.name
    result.best_config = ctx.search_dir / BEST_CONFIG
    write_text(result.best_config, _best_toml(ctx, best, name, s.metric))
    trial = f"trial-{best.number:03d}"
    _link(ctx.search_dir / BEST, trial)
    runs_best = ctx.search_dir.parent / BEST
    if not _link(runs_best, f"{name}/{trial}"):
        result.notes.append(f"{runs_best} is a real folder, not a link; left as it is")


def run_search(
    search_dir: Path,
    *,
    evals: int | None = None,
    max_minutes: float | None = None,
    reporter: SearchReporter | None = None,
) -> SearchResult:
    """Run (or continue) the search in ``search_dir`` until ``evals`` trials or the time is up."""
    from heartcli.tracking import Tracker

    started = time.perf_counter()
    search_dir = Path(search_dir)
    state = read_state(search_dir)
    config = search_config(search_dir)
    config_text = (search_dir / CONFIG).read_text(encoding="utf-8")
    s = config.search
    if evals is not None:
        state["evals"] = evals
    evals = int(state["evals"])
    minutes = s.max_minutes if max_minutes is None else max_minutes
    deadline = time.monotonic() + minutes * 60 if minutes > 0 else None
    space = parse_space(s.space)
    maximise = maximize(s.metric)

    records = _records(state)
    done = [r for r in records if r.status != "running"]
    pending = next((r for r in records if r.status == "running"), None)
    suggester = Suggester(space, config.model.conv_layers, s.seed, s.startup_trials)
    for r in done:
        suggester.add(r.number, r.vals, r.loss(maximise))

    train_data, val_data = _shared_folds(config, space)
    parent = Tracker(config, search_dir, run_id=state.get("parent_run_id"))
    state["parent_run_id"] = parent.run_id
    ctx = Context(
        search_dir,
        config,
        config_text,
        parent.run_id,
        train_data,
        val_data,
        deadline,
        reporter,
        [r.curve for r in done if r.status in REFERENCE],
        parent.uri,
    )
    result = SearchResult(
        search_dir, s.metric, done, None, None, None, 0.0, parent.run_id, keys=space.keys
    )
    if reporter is not None:
        reporter.start(
            {
                "search_dir": str(search_dir),
                "evals": evals,
                "done": len(done),
                "metric": s.metric,
                "keys": space.keys,
                "tracking_run_id": parent.run_id,
            }
        )
    status = "completed"
    try:
        for number in range(len(done) + 1, evals + 1):
            if deadline is not None and time.monotonic() >= deadline:
                result.stopped = "max_minutes"
                break
            if pending is not None and pending.number == number:
                record = pending
            else:
                vals = suggester.suggest(number)
                record = TrialRecord(number, vals, suggester.values(vals))
            # Saved before it runs: a crash leaves it "running", and --resume continues it.
            _save(search_dir, state, [*done, record])
            if reporter is not None:
                reporter.trial_start(record, evals)
            record = run_trial(ctx, record)
            done.append(record)
            _save(search_dir, state, done)
            suggester.add(record.number, record.vals, record.loss(maximise))
            if record.status in REFERENCE:
                ctx.finished_curves.append(record.curve)
            if reporter is not None:
                reporter.trial_end(record, _best(done, maximise))
            if record.status == "stopped":
                result.stopped = "max_minutes"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        result.records = done
        with contextlib.suppress(Exception):
            finalize(ctx, done, result)
        best = result.best
        if best is not None and best.metric is not None:
            parent.log_metrics({f"best_{s.metric}": best.metric}, step=best.number)
            parent.set_tags({"heart.best_trial": f"trial-{best.number:03d}"})
        parent.set_tags({"heart.trials": str(len(done))})
        for artifact in (search_dir / STATE, search_dir / BEST_CONFIG):
            parent.log_artifact(artifact)
        parent.end(status)
        result.seconds = time.perf_counter() - started
    return result


def tune(
    config: HeartConfig | None,
    *,
    name: str | None = None,
    resume: Path | None = None,
    evals: int | None = None,
    max_minutes: float | None = None,
    config_base: Any = None,
    reporter: SearchReporter | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> SearchResult:
    """Start a new search from ``config``, or continue the one in ``resume``."""
    if resume is not None:
        search_dir = Path(resume)
        read_state(search_dir)
        if (backend or search_config(search_dir).search.backend) == "ray":
            raise UsageError("--resume continues hyperopt searches; rerun a ray search afresh")
    else:
        assert config is not None
        if evals is not None:
            config.search.evals = evals
        if max_minutes is not None:
            config.search.max_minutes = max_minutes
        if backend is not None:
            config.search.backend = backend  # type: ignore[assignment]
        search_dir = new_search(config, name, config_base)
        if config.search.backend == "ray":
            from heartcli.search_ray import run_ray

            return run_ray(search_dir, address=address, reporter=reporter)
    return run_search(search_dir, evals=evals, max_minutes=max_minutes, reporter=reporter)


def describe(values: dict[str, Any], keys: Iterable[str] | None = None) -> str:
    """Short text of a trial's values (in the order of ``keys``) for the live table."""
    order = list(keys) if keys is not None else list(values)
    parts = []
    for key in order:
        if key not in values:
            continue
        value = values[key]
        short = key.split(".", 1)[1]
        if isinstance(value, float):
            text = f"{value:.3g}"
        elif isinstance(value, list):
            text = "/".join(str(v) for v in value)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"{short}={text}")
    return " ".join(parts)
