"""`heart tune --backend ray`: the same space through Ray Tune, to tune across machines.

Ray Tune's HyperOptSearch runs TPE over the very hyperopt space the in-process backend uses,
a ConcurrencyLimiter caps parallel trials at ``[search] concurrency`` (``--jobs``), and the
same ``[search]`` keys pick Ray's own scheduler: ``pruner = "asha"`` is ``ASHAScheduler``
(grace period ``min_epochs``, ``reduction_factor``, max_t the most epochs a trial can run),
``"median"`` is ``MedianStoppingRule`` (grace period ``warmup_epochs``, ``min_trials``
samples required), ``"none"`` is FIFO. A trial a scheduler stops ends "pruned" in its
manifest, search.json and MLflow.

No node needs the driver's disk, and the driver needs no shared storage:

- a trial gets its config as text and its data from Ray's object store, trains in a scratch
  folder of its node, and sends its files back through an inbox actor (ray_trial.py);
- the driver writes them into ``runs/NAME/trial-NNN`` and logs every trial to MLflow as a
  nested run of the search (ray_results.py): one store, the driver's;
- a failed trial (a lost node) is retried ``[search] max_failures`` times from its last
  epoch; Ray's own experiment state lives in ``runs/NAME/ray`` on the driver, so
  ``heart tune --resume runs/NAME`` continues an interrupted search (Tuner.restore).

Connecting (cluster.py) comes before the search folder is claimed. Ray is an optional extra
(``pip install 'heartcli[ray]'``); nothing imports it otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from heartcli.config import SearchConfig
from heartcli.config.sampling import to_hyperopt
from heartcli.errors import HeartError, UsageError
from heartcli.progress import Progress
from heartcli.search.claim import SearchLock, new_search
from heartcli.search.cluster import connect, disconnect
from heartcli.search.events import SearchResult, start_summary
from heartcli.search.records import TrialRecord, trial_config
from heartcli.search.report import finish
from heartcli.search.spec import Search
from heartcli.search.state import read_state, records_of, save_state
from heartcli.search.trial import shared_folds

EXPERIMENT = "ray"  # Ray Tune's experiment folder inside runs/NAME
DATA_LOADS = ("data.dir", "data.split", "data.classes")  # keys that pick what a trial loads


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Joined to the cluster (or a local Ray) for the duration, and left after.

    Ray prints to stdout from its own threads (a lost node's "(raylet) ..." error among
    them) until the driver leaves the cluster: all of it goes to stderr, as stdout is
    heart's result (one JSON document with --json).
    """
    with contextlib.redirect_stdout(sys.stderr):
        started = connect(address)
        try:
            yield
        finally:
            if started:
                disconnect()


def start_ray(
    search: Search, *, address: str | None = None, progress: Progress | None = None
) -> SearchResult:
    """A new Ray search (planned, not claimed): join the cluster first, then claim its
    folder and run it."""
    with ray_session(address):
        datasets = trial_datasets(search)
        lock = new_search(search)
        try:
            return run_ray(search, progress=progress, datasets=datasets)
        finally:
            lock.release()


def resume_ray(
    search: Search, *, address: str | None = None, progress: Progress | None = None
) -> SearchResult:
    """Continue an interrupted Ray search where Ray's experiment state left it."""
    if not (search.folder / EXPERIMENT / "tuner.pkl").exists():
        raise UsageError(
            f"{search.folder}: Ray never saved this search's state (it stopped before its first "
            "trial); start it again under a new --name"
        )
    with ray_session(address):
        lock = SearchLock(search.folder)
        lock.acquire()
        try:
            return run_ray(search, progress=progress, resume=True)
        finally:
            lock.release()


def run_ray(
    search: Search,
    *,
    progress: Progress | None = None,
    resume: bool = False,
    datasets: dict[str, tuple[Any, Any]] | None = None,
) -> SearchResult:
    """Run (or continue) ``search`` through Ray Tune on the joined cluster.

    ``datasets`` are what trials train on (see :func:`trial_datasets`; loaded when None).
    """
    from heartcli.search.ray_results import activate

    begun = time.perf_counter()
    search = replace(search, folder=search.folder.resolve())
    if datasets is None:
        datasets = trial_datasets(search)
    book, parent = _open_book(search, progress or Progress(), resume)
    status = "interrupted"
    activate(book)
    try:
        _fit(_tuner(search, datasets, book.inbox, resume), book)
        _refit_on_driver(search, book, parent)
        status = "completed"
    finally:
        activate(None)
        if status != "completed":
            book.interrupt()
        result = SearchResult(
            search.folder,
            search.metric,
            sorted(book.records.values(), key=lambda r: r.number),
            tracking_run_id=parent.run_id,
            keys=search.space.keys,
            jobs=search.s.concurrency,
        )
        book.save()
        _wrap_up(search, result, parent, status, book.state)
        _kill(book.inbox)
        result.seconds = time.perf_counter() - begun
    return result


def _open_book(search: Search, progress: Progress, resume: bool) -> tuple[Any, Any]:
    """(the driver's record of the search, its parent MLflow run), the inbox started."""
    from heartcli.search.ray_results import Book
    from heartcli.tracking import Tracker

    state = read_state(search.folder)
    run_id = state.get("parent_run_id") if resume else None
    parent = Tracker(search.config, search.folder, run_id=run_id)
    state["parent_run_id"] = parent.run_id
    state["ray_started"] = time.time()
    records = records_of(state)
    save_state(search.folder, state, records)  # the parent run's id: a resume reopens it
    book = Book(
        search,
        state,
        parent.run_id,
        _inbox(records),
        progress,
        records={r.key: r for r in records},
    )
    progress.start(
        start_summary(
            search,
            records,
            evals=int(state["evals"]),
            done=sum(r.finished for r in records),
            parent_run_id=parent.run_id,
            jobs=search.s.concurrency,
        )
    )
    return book, parent


def _fit(tuner: Any, book: Any) -> None:
    """Ray Tune's run; its failures as one line; trials Ray lost settled after it."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's own progress: not stdout
            grid = tuner.fit()
    except (HeartError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise HeartError(f"ray: the search stopped ({first})") from None
    if grid.errors and not book.records:
        raise HeartError(f"ray: the search failed before any trial ran ({grid.errors[0]})")
    book.settle()


# --------------------------------------------------------------------------- the pieces


def trial_datasets(search: Search) -> dict[str, tuple[Any, Any]]:
    """What trials train on, loaded once on the driver for Ray's object store.

    The shared training and validation fold; or, when the space changes the validation
    fold or the data, every training split a trial can ask for, whole (each trial carves
    its own validation fold from it).
    """
    from heartcli.data.dataset import load_split
    from heartcli.search.ray_trial import data_key

    config, space = search.config, search.space
    train, val = shared_folds(search)
    if train is not None:
        return {data_key(config): (train, val)}
    choices: list[list[Any]] = []
    for key in DATA_LOADS:
        param = space.param(key)
        options = param.dist.values() if param is not None and param.dist is not None else None
        if param is not None and options is None:
            raise UsageError(
                f"search.space.{key}: the ray backend loads every dataset a trial can use "
                "before the search starts; give it a choice of values"
            )
        choices.append(options if options is not None else [None])
    out: dict[str, tuple[Any, Any]] = {}
    for combo in itertools.product(*choices):
        picked = {k: v for k, v in zip(DATA_LOADS, combo, strict=True) if v is not None}
        cfg = trial_config(config, picked, 0) if picked else config
        d = cfg.data
        out[data_key(cfg)] = (load_split(d.dir, d.split, "train", classes=d.classes), None)
    return out


def _inbox(records: list[TrialRecord]) -> Any:
    """The inbox actor on the head node, holding what a resumed search's trials start from."""
    import ray

    from heartcli.model import runs
    from heartcli.search.ray_trial import Inbox

    numbers = {r.key: r.number for r in records if r.key}
    files: dict[str, dict[str, bytes]] = {}
    for r in records:
        folder = Path(r.run_dir)
        if r.key and r.status == "running" and (folder / runs.CHECKPOINT).exists():
            files[r.key] = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            }
    finals = {
        r.key: {
            "trial": r.number,
            "final": True,
            "epoch": r.epochs_run,
            "heart_status": r.status,
            "best_epoch": r.best_epoch,
            "node": r.node,
        }
        for r in records
        if r.key and r.status != "running"
    }
    actor = ray.remote(Inbox).options(
        num_cpus=0,
        resources={"node:__internal_head__": 0.001},  # it outlives any worker node
        max_concurrency=8,
    )
    return actor.remote(numbers, files, finals)


def _kill(inbox: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.kill(inbox)


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


def _tuner(search: Search, datasets: dict[str, tuple[Any, Any]], inbox: Any, resume: bool) -> Any:
    """Ray Tune's Tuner for the search (or the one Ray saved, to continue it)."""
    from ray import tune

    from heartcli.search.ray_results import TrialLog
    from heartcli.search.ray_trial import trainable

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # heart keeps the results
    # Ctrl-C is a KeyboardInterrupt here, as everywhere in heart (exit 130, trials closed as
    # interrupted); Ray Tune's own handler would end fit() as if the search had finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # Ray's experiment state (what --resume restores) at most 5 s old, not "auto" (>= 10 s).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    s = search.s
    resources: dict[str, float] = {
        "cpu": 1,
        "gpu": 1 if search.config.train.device == "cuda" else 0,
    }
    trial = tune.with_parameters(
        trainable,
        search_dir=str(search.folder),
        config_text=search.text,
        datasets=datasets,
        inbox=inbox,
    )
    wrapped = tune.with_resources(trial, resources)
    if resume:
        return tune.Tuner.restore(
            str(search.folder / EXPERIMENT), trainable=wrapped, resume_unfinished=True
        )
    mode = "max" if search.maximise else "min"
    return tune.Tuner(
        wrapped,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(
                to_hyperopt(search.space, search.config.model.conv_layers), s, mode
            ),
            scheduler=scheduler(s, search.max_epochs, mode),
            num_samples=s.evals,
            time_budget_s=s.max_minutes * 60 if s.max_minutes > 0 else None,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(search.folder),  # Ray's experiment state: on the driver's disk
            verbose=0,
            callbacks=[TrialLog()],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )


def _refit_on_driver(search: Search, book: Any, parent: Any) -> None:
    """``[search] refit`` on Ray: the refit stage runs after Ray Tune's trials, on this
    (the driver's) machine, through the hyperopt backend's worker processes and code
    (search/final.py), ``[search] concurrency`` folds at once (at most one per core here)."""
    from heartcli.search.final import run_refit
    from heartcli.search.refit import Hooks
    from heartcli.search.workers import WorkerArgs, cores

    if not search.s.refit:
        return
    jobs = max(1, min(search.s.concurrency, cores()))
    args = WorkerArgs(
        search, str(Path.cwd()), parent.uri, parent.run_id, max(1, cores() // jobs), "refit"
    )
    hooks = Hooks(book.save, book.progress, None, parent.log_metrics)
    records = sorted(book.records.values(), key=lambda r: r.number)
    run_refit(search, book.state, records, jobs=jobs, hooks=hooks, args=args)


def _wrap_up(
    search: Search, result: SearchResult, parent: Any, status: str, state: dict[str, Any]
) -> None:
    """The best trial's links, the report, and the search's own MLflow run closed."""
    from heartcli.search.final import link_result

    link_result(search, result, state)
    tags = {"heart.backend": "ray", "heart.pruner": search.s.pruner}
    finish(search, result, parent, status, tags=tags)
