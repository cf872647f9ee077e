"""A search's folder and JSON state: trial records, claiming the folder, the best trial's links.

A search lives in ``runs/NAME/``: ``search.toml`` (the resolved config it runs, comments
kept), ``search.json`` (every trial, written atomically by the one process that runs the
search), ``trial-NNN/`` (a full `heart train` run folder per trial), ``.lock`` (held for the
life of the process running it), and at the end ``best`` (a link to the best trial's folder),
``best.toml`` (its config, runnable by `heart train --config`), ``report.png`` /
``report.json`` and ``runs/best`` (a link to the latest search's best trial). With
``[search] refit``: ``trial-NNN/folds/fold-<i>`` and ``trial-NNN/oof.npz`` for the refitted
trials, ``search.json``'s ``refit`` section, and ``final`` (what the search recommends, one
model), which ``best`` and ``runs/best`` then point at (search/refit.py, search/final.py).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from heartcli.config import HeartConfig, dumps
from heartcli.config.space import Space, apply
from heartcli.errors import ConfigError, DataError, HeartError, UsageError
from heartcli.io import read_json, write_json, write_text

if TYPE_CHECKING:  # spec.py builds on this module
    from heartcli.progress import Progress
    from heartcli.search.spec import Search

STATE = "search.json"
CONFIG = "search.toml"
LOCK = ".lock"
BEST = "best"
BEST_CONFIG = "best.toml"
FORMAT = "heart-search/1"
DONE = ("completed", "early_stopped", "pruned", "stopped")  # finished with a metric
# The median stopping rule compares with trials that ran their course (as Ray's
# MedianStoppingRule and Optuna's MedianPruner do): not pruned or cut-off ones.
REFERENCE = ("completed", "early_stopped")
# Keys that change the data or the validation fold: with one in the space, every trial
# loads and carves its own data instead of sharing one fold.
DATA_KEYS = ("train.val_fraction", "train.val_records", "train.seed")


def trial_name(number: int) -> str:
    """A trial's folder (and MLflow run) name: ``trial-NNN``."""
    return f"trial-{number:03d}"


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
    # Successive halving: epoch (as text, JSON keys) -> the metric recorded at that rung.
    rungs: dict[str, float] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)  # the finished trials TPE knew when suggesting
    started_at: float | None = None  # unix time the trial (last) started
    ended_at: float | None = None  # unix time it ended
    worker: int | None = None  # process id of the worker that ran it (--jobs)
    key: str = ""  # Ray Tune's trial id (ray backend): the same on every retry
    retries: int = 0  # times Ray restarted it after a failure (a lost node)
    node: str = ""  # Ray node id that ran (the last try of) it

    @property
    def finished(self) -> bool:
        return self.status in DONE

    @property
    def rung(self) -> int:
        """The highest rung (in epochs) this trial reached; 0 for none."""
        return max((int(e) for e in self.rungs), default=0)

    def loss(self, maximize: bool) -> float | None:
        """What TPE minimises: the best value the trial reported (pruned ones too); None for a
        failed trial."""
        if self.status == "failed" or self.metric is None:
            return None
        return -self.metric if maximize else self.metric


# --------------------------------------------------------------------------- progress
# A search tells its Progress (heartcli.progress): start(summary) once, task(trial-NNN) as a
# trial starts, done("trial-NNN epoch E", figures) after each of its epochs, and
# done(trial-NNN, its TrialRecord) as it ends.


def start_summary(
    search: Search,
    records: list[TrialRecord],
    *,
    evals: int,
    done: int,
    parent_run_id: str | None,
    jobs: int,
) -> dict[str, Any]:
    """What a search tells its Progress as it starts: folder, trials, metric, keys, the
    best trial so far (a resumed search's), the MLflow run, trials at once."""
    best = best_of(records, search.maximise)
    return {
        "search_dir": str(search.folder),
        "evals": evals,
        "done": done,
        "metric": search.metric,
        "keys": search.space.keys,
        "best": asdict(best) if best is not None else None,
        "tracking_run_id": parent_run_id,
        "jobs": jobs,
    }


def tell_epoch(progress: Progress, record: TrialRecord, epoch: int, epochs: int) -> None:
    """A trial's epoch ended: its number, the epochs it may run and the metric's value."""
    figures = {"trial": record.number, "epoch": epoch, "epochs": epochs, "value": record.curve[-1]}
    progress.done(f"{trial_name(record.number)} epoch {epoch}", figures)


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


def history(run_dir: Path) -> list[dict[str, Any]]:
    """A run folder's history.csv rows ([] when there is none yet)."""
    from heartcli.model.runs import HISTORY

    path = run_dir / HISTORY
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def max_trial_epochs(config: HeartConfig, space: Space) -> int:
    """The most epochs any trial can run: train.epochs (or its searched maximum), capped."""
    epochs = config.train.epochs
    searched = [p.dist for p in space.all_params() if p.key == "train.epochs" and p.dist]
    if searched:  # at the top level or under the options of a `when` (the most of them)
        epochs = max(
            int(max(float(a) for a in (d.args if d.kind == "choice" else d.args[:2])))
            for d in searched
        )
    if config.search.max_epochs:
        epochs = min(epochs, config.search.max_epochs)
    return max(1, epochs)


def check_folds(config: HeartConfig) -> None:
    """``[search] folds``: 2 or more, with no pruner and the macro-F1 the folds report."""
    s = config.search
    if s.folds == 0:
        return
    if s.folds == 1:
        raise UsageError("search.folds: 1 fold is no cross-validation; use 0 (off) or 2 or more")
    if s.refit:  # the folds of the refit stage, after the rungs (search/refit.py)
        return
    if s.backend == "ray":
        raise UsageError(
            "search.folds runs on the hyperopt backend (a Ray trial trains one fold); use "
            "--backend hyperopt, or search.folds = 0 on Ray"
        )
    if s.pruner != "none":
        raise UsageError(
            f'search.folds = {s.folds} needs search.pruner = "none": a trial\'s folds train one '
            f'after another, so there is no single curve for "{s.pruner}" to cut'
        )
    if s.metric != "val_macro_f1":
        raise UsageError(
            f"search.folds = {s.folds} selects on the folds' mean macro-F1; set search.metric "
            f'= "val_macro_f1" (got "{s.metric}")'
        )


def check_pruner(config: HeartConfig, space: Space) -> None:
    """A pruner whose first rung no trial can reach is a mistake, not a silent no-op."""
    check_folds(config)
    s = config.search
    if s.pruner != "asha":
        return
    most = max_trial_epochs(config, space)
    if s.min_epochs > most:
        raise UsageError(
            f"search.min_epochs: {s.min_epochs} is more than any trial's epochs ({most}); "
            "lower search.min_epochs or raise train.epochs"
        )


# --------------------------------------------------------------------------- state


def now() -> str:
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


def records_of(state: dict[str, Any]) -> list[TrialRecord]:
    known = set(TrialRecord.__dataclass_fields__)
    return [TrialRecord(**{k: v for k, v in t.items() if k in known}) for t in state["trials"]]


def save_state(search_dir: Path, state: dict[str, Any], records: list[TrialRecord]) -> None:
    state["trials"] = [asdict(r) for r in sorted(records, key=lambda r: r.number)]
    state["updated"] = now()
    write_json(search_dir / STATE, state)


def best_of(records: list[TrialRecord], maximise: bool) -> TrialRecord | None:
    scored = [r for r in records if r.finished and r.metric is not None]
    if not scored:
        return None
    # Ties go to the earlier trial.
    return sorted(scored, key=lambda r: (-(r.metric or 0.0) if maximise else r.metric, r.number))[0]


# --------------------------------------------------------------------------- claiming


class SearchLock:
    """An exclusive lock on a search folder, held while one process runs it.

    ``fcntl.flock`` on ``.lock``: released by the kernel when the process dies, so a
    kill -9 never leaves a folder locked. Where flock does not exist (Windows), only the
    atomic creation of the folder protects it.
    """

    def __init__(self, search_dir: Path):
        self.search_dir = search_dir
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        path = self.search_dir / LOCK
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            import fcntl
        except ImportError:  # pragma: no cover (not POSIX)
            self._fh = fh
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise UsageError(
                f"{self.search_dir} is in use by another `heart tune`; wait for it to finish "
                "or choose another --name"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None


def check_search_name(name: str) -> None:
    """``--name`` of a search: a run name (:func:`heartcli.model.runs.check_name`), and not
    the ``best`` link the search folder's parent keeps."""
    from heartcli.model.runs import check_name

    check_name(name)
    if name == BEST:
        raise UsageError(
            f"--name {name!r}: a search name is one folder name of letters, digits, '.', '_' "
            f"and '-' (at most 100, and not {BEST!r})"
        )


def new_search(search: Search) -> SearchLock:
    """Claim the planned search's folder (an atomic mkdir, then its lock) with its config and
    an empty state; nothing runs yet. Two starts with one name: the second is refused."""
    search_dir = search.folder
    try:
        search_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only or full file system
        raise HeartError(
            f"cannot create {search_dir.parent}: {exc.strerror}; choose a writable folder as "
            "[train] runs_dir"
        ) from None
    try:
        search_dir.mkdir()
    except FileExistsError:
        if (search_dir / STATE).exists():
            probe = SearchLock(search_dir)
            probe.acquire()  # refused (in use) when another process runs it
            probe.release()
            raise UsageError(
                f"{search_dir} already exists; choose another --name or continue it with "
                f"`heart tune --resume {search_dir}`"
            ) from None
        raise UsageError(
            f"{search_dir} is in use by another `heart tune` (or was left half-created; "
            "remove it); choose another --name"
        ) from None
    except OSError as exc:
        raise HeartError(
            f"cannot create {search_dir}: {exc.strerror}; choose a writable folder as "
            "[train] runs_dir"
        ) from None
    lock = SearchLock(search_dir)
    lock.acquire()
    write_text(search_dir / CONFIG, search.text)
    write_json(
        search_dir / STATE,
        {
            "format": FORMAT,
            "name": search_dir.name,
            "created": now(),
            "updated": now(),
            "evals": search.s.evals,
            "parent_run_id": None,
            "space": space_record(search.s.space),
            "trials": [],
        },
    )
    return lock


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def space_record(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as the search started: its SHA-256 and each key's distribution."""
    import hashlib

    return {
        "sha256": hashlib.sha256(_canonical(list(space.items())).encode()).hexdigest(),
        "keys": {key: _canonical(spec) for key, spec in space.items()},
        "order": list(space),
    }


def check_space_unchanged(search: Search, state: dict[str, Any]) -> None:
    """Refuse to resume a search whose [search.space] changed since it started (a key
    added, removed, moved or given another distribution): the trials so far were drawn
    from the old space, and TPE would read them as draws from the new one."""
    recorded = state.get("space")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return  # a search from before the space was recorded
    now_space = space_record(search.s.space)
    if now_space["sha256"] == recorded["sha256"]:
        return
    old_keys = recorded.get("keys") or {}
    new_keys = now_space["keys"]
    changed = sorted(k for k in set(old_keys) | set(new_keys) if old_keys.get(k) != new_keys.get(k))
    if not changed:
        changed = ["the order of the keys"]
    raise UsageError(
        f"{search.folder / CONFIG}: [search.space] changed since the search started "
        f"({', '.join(changed)}); restore it to resume, or start a new search with `heart tune`"
    )


def trial_config(config: HeartConfig, values: dict[str, Any], number: int) -> HeartConfig:
    """The base config with a trial's values; an impossible combination is a ConfigError."""
    data = apply(config.to_dict(), values)
    data["search"]["space"] = {}
    cap = config.search.max_epochs
    if cap and data["train"]["epochs"] > cap:
        data["train"]["epochs"] = cap
    try:
        return HeartConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"trial {number}: {where}: {message}")
        raise ConfigError(problems) from None


# --------------------------------------------------------------------------- the end


def link(path: Path, target: str) -> bool:
    """Point ``path`` at ``target`` (relative) atomically; False when a real folder is there."""
    if path.exists() and not path.is_symlink():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)
    return True


def _best_toml(search: Search, best: TrialRecord) -> str:
    search_dir = search.folder
    cfg = trial_config(search.config, best.params, best.number)
    text = dumps(cfg, search.document())
    params = "\n".join(f"#   {k} = {v}" for k, v in best.params.items())
    header = (
        f"# Best trial of search {search_dir.name}: {trial_name(best.number)}, {search.metric} "
        f"{best.metric:.4f}\n"
        f"# (epoch {best.best_epoch} of {best.epochs_run}). Train it again with\n"
        f"#   heart train --config {search_dir / BEST_CONFIG} --name {search_dir.name}-best\n"
        f"# Sampled values:\n{params}\n\n"
    )
    return header + text


def link_best(
    search: Search, records: list[TrialRecord]
) -> tuple[TrialRecord | None, Path | None, list[str]]:
    """Links to the best trial and its config: (best, best.toml, notes)."""
    search_dir = search.folder
    best = best_of(records, search.maximise)
    if best is None:
        return None, None, ["no trial finished with a score; nothing to link as best"]
    notes: list[str] = []
    best_config = search_dir / BEST_CONFIG
    write_text(best_config, _best_toml(search, best))
    trial = trial_name(best.number)
    link(search_dir / BEST, trial)
    runs_best = search_dir.parent / BEST
    if not link(runs_best, f"{search_dir.name}/{trial}"):
        notes.append(f"{runs_best} is a real folder, not a link; left as it is")
    return best, best_config, notes


def mark_ended(run_dir: Path, status: str, reason: str = "") -> None:
    """Close a trial folder whose process could not: its manifest and MLflow run (if they
    still say running) get ``status`` (pruned or failed)."""
    from heartcli.model import runs

    try:
        manifest = runs.read_run_manifest(run_dir)
    except HeartError:
        return
    if manifest.get("status") != "running":
        return
    manifest["status"] = status
    if reason:
        manifest["reason"] = reason
    runs.write_manifest(run_dir, manifest)
    tracking = manifest.get("tracking") or {}
    if tracking.get("uri") and tracking.get("run_id"):
        with contextlib.suppress(Exception):  # best effort: the run folder is what matters
            from mlflow.tracking import MlflowClient

            from heartcli.tracking import live_uri

            client = MlflowClient(tracking_uri=live_uri(tracking["uri"]))
            client.set_tag(tracking["run_id"], "heart.status", status)
            client.set_terminated(
                tracking["run_id"], status="FAILED" if status == "failed" else "FINISHED"
            )


def check_trial_dir(run_dir: Path) -> None:
    """A trial folder is a real folder inside its search folder: a link (to somewhere out
    of runs/) is never followed, written into or deleted through."""
    if run_dir.is_symlink() or (
        run_dir.exists() and run_dir.resolve().parent != run_dir.parent.resolve()
    ):
        raise DataError(
            f"{run_dir}: a link, not a trial folder heart made; heart never writes through "
            "it, remove the link to run the trial"
        )


def clear_trial_dir(run_dir: Path, uri: str | None, parent_run_id: str | None) -> bool:
    """True to resume the trial's run folder; a folder that cannot be resumed is cleared."""
    from heartcli.model import runs

    check_trial_dir(run_dir)
    if not run_dir.exists():
        return False
    if (run_dir / runs.CHECKPOINT).exists() and (run_dir / runs.MANIFEST).exists():
        with contextlib.suppress(DataError):
            runs.read_run_manifest(run_dir)
            return True
    _drop_tracking(uri, parent_run_id, run_dir)
    shutil.rmtree(run_dir)
    return False


def restart_trial_dir(run_dir: Path, uri: str | None, parent_run_id: str | None) -> None:
    """Clear a trial folder (and its MLflow run) that starts again from nothing."""
    check_trial_dir(run_dir)
    if run_dir.exists():
        _drop_tracking(uri, parent_run_id, run_dir)
        shutil.rmtree(run_dir)


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


def failure(exc: BaseException) -> str:
    """One line for a trial's failure."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate" in text:
        return f"out of memory: {text}"
    if isinstance(exc, HeartError):
        return text
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- the result


@dataclass
class SearchResult:
    search_dir: Path
    metric: str
    records: list[TrialRecord]
    best: TrialRecord | None = None
    best_config: Path | None = None
    stopped: str | None = None  # why it ended before evals: "max_minutes", or None
    seconds: float = 0.0
    tracking_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the space's keys, in order
    jobs: int = 1
    report: dict[str, Any] = field(default_factory=dict)
    ensemble: dict[str, Any] | None = None  # [search] ensemble: its folder and scores
    refit: dict[str, Any] | None = None  # [search] refit: the refit stage and its choice

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "search_dir": str(self.search_dir),
            "metric": self.metric,
            "trials": len(self.records),
            "jobs": self.jobs,
            "status_counts": counts,
            "best": asdict(self.best) if self.best else None,
            "best_dir": str(self.search_dir / BEST) if self.best else None,
            "best_config": str(self.best_config) if self.best_config else None,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
            "tracking_run_id": self.tracking_run_id,
            "notes": self.notes,
            "records": [asdict(r) for r in self.records],
            "report": self.report,
            "ensemble": self.ensemble,
            "refit": self.refit,
        }


def describe(values: dict[str, Any], keys: list[str] | None = None) -> str:
    """Short text of a trial's values (in the order of ``keys``) for tables."""
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
