"""`heart tune` with the hyperopt backend: TPE suggests, workers train, the pruner stops.

Determinism across resume: TPE is driven one trial at a time, with the seed of trial ``n``
derived from ``([search] seed, n)``; the history it sees is rebuilt from search.json, and
every record keeps the numbers of the finished trials TPE knew when it suggested it
(``seen``). A trial's point is saved before it starts, so a resumed search continues the
trials that were running with the points they were given; with one job, a resumed search
suggests exactly the points an uninterrupted one would. Nothing is unpickled: the state
is JSON.

TPE learns from every trial's best reported value: pruned trials count with the best
value they reached, failed ones as failures.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.config.sampling import flatten, to_hyperopt
from heartcli.config.space import Space
from heartcli.progress import Progress
from heartcli.search.checks import check_pruner
from heartcli.search.claim import SearchLock
from heartcli.search.events import SearchResult, start_summary, tell_epoch
from heartcli.search.pruners import Pruner, make_pruner, why
from heartcli.search.records import TrialRecord, trial_name
from heartcli.search.refit import check_refit
from heartcli.search.report import finish
from heartcli.search.spec import Search
from heartcli.search.state import CONFIG, check_space_unchanged, read_state, records_of, save_state
from heartcli.search.trial_dir import mark_ended
from heartcli.search.workers import Worker, WorkerArgs, cores, run_pool


def trial_seed(seed: int, number: int) -> int:
    """The TPE seed of trial ``number``: fixed by (search seed, number), whatever ran before."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class Suggester:
    """hyperopt TPE, one trial at a time, with its history rebuilt from plain records.

    The history TPE sees is ordered by trial number, whatever order the trials finished in
    (with --jobs they finish out of order), so a point depends only on which trials were
    known, never on timing.
    """

    def __init__(self, space: Space, fixed_layers: int, seed: int, startup_trials: int):
        from hyperopt.base import Domain

        logging.getLogger("hyperopt").setLevel(logging.WARNING)
        self.space = space
        self.expr = to_hyperopt(space, fixed_layers)
        self.domain = Domain(lambda _: 0.0, self.expr)
        self.history: dict[int, tuple[dict[str, list[Any]], float | None]] = {}
        self.seed = seed
        self.startup_trials = startup_trials

    @property
    def known(self) -> list[int]:
        """The trial numbers told so far."""
        return sorted(self.history)

    def add(self, number: int, vals: dict[str, list[Any]], loss: float | None) -> None:
        """Tell TPE a finished trial; ``loss`` None is a failure (STATUS_FAIL)."""
        self.history[number] = (vals, loss)

    def _trials(self) -> Any:
        from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Trials

        trials = Trials()
        for number in sorted(self.history):
            vals, loss = self.history[number]
            tid = number - 1
            misc = {
                "tid": tid,
                "cmd": self.domain.cmd,
                "workdir": self.domain.workdir,
                "idxs": {label: [tid] if v else [] for label, v in vals.items()},
                "vals": {label: list(v) for label, v in vals.items()},
            }
            ok = {"status": STATUS_OK, "loss": loss}
            result = {"status": STATUS_FAIL} if loss is None else ok
            docs = trials.new_trial_docs([tid], [None], [result], [misc])
            docs[0]["state"] = JOB_STATE_DONE
            trials.insert_trial_docs(docs)
        trials.refresh()
        return trials

    def suggest(self, number: int) -> dict[str, list[Any]]:
        """hyperopt's vals (label -> [value] / []) of trial ``number``."""
        from hyperopt import tpe

        algo = partial(tpe.suggest, n_startup_jobs=self.startup_trials)
        docs = algo([number - 1], self.domain, self._trials(), trial_seed(self.seed, number))
        vals = docs[0]["misc"]["vals"]
        return {label: [_plain(v) for v in values] for label, values in vals.items()}

    def values(self, vals: dict[str, list[Any]]) -> dict[str, Any]:
        """Config key -> value of a trial's vals."""
        from hyperopt import space_eval

        point = {label: v[0] for label, v in vals.items() if v}
        return flatten(self.space, space_eval(self.expr, point))


class Loop:
    """The parent's side of a running search: state, TPE, the pruner, the deadline."""

    def __init__(
        self,
        search: Search,
        evals: int | None,
        max_minutes: float | None,
        progress: Progress,
    ):
        from heartcli.tracking import Tracker

        self.search = search
        self.search_dir = search.folder
        self.state = read_state(search.folder)
        check_space_unchanged(search, self.state)
        check_pruner(search.config, search.space)
        s = self.s = search.s
        self.evals = int(self.state["evals"] if evals is None else evals)
        check_refit(search.config, search.space, self.evals)
        self.state["evals"] = self.evals
        minutes = s.max_minutes if max_minutes is None else max_minutes
        self.deadline = time.monotonic() + minutes * 60 if minutes > 0 else None
        self.maximise = search.maximise
        self.progress = progress
        self.records = {r.number: r for r in records_of(self.state)}
        # Trials saved as running were cut off (kill -9, Ctrl-C): they run again first.
        self.queue = sorted(n for n, r in self.records.items() if r.status == "running")
        self.suggester = Suggester(
            search.space, search.config.model.conv_layers, s.seed, s.startup_trials
        )
        done = [r for r in self.records.values() if r.status != "running"]
        for r in sorted(done, key=lambda r: r.number):
            self.suggester.add(r.number, r.vals, r.loss(self.maximise))
        self.pruner: Pruner = make_pruner(s, search.max_epochs, self.maximise, done)
        self.out_of_time: set[int] = set()
        self.stopped: str | None = None
        self.parent = Tracker(search.config, search.folder, run_id=self.state.get("parent_run_id"))
        self.state["parent_run_id"] = self.parent.run_id

    def save(self) -> None:
        save_state(self.search_dir, self.state, list(self.records.values()))

    def out_of_budget(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = "max_minutes"
            return True
        return False

    def remaining(self) -> int:
        """Trials still to run: the cut-off ones and the ones not yet started."""
        return len(self.queue) + max(0, self.evals - max(self.records, default=0))

    def has_more(self) -> bool:
        return not self.stopped and self.remaining() > 0 and not self.out_of_budget()

    def next_trial(self) -> TrialRecord | None:
        """The next trial to run (saved as running before it starts), None when done."""
        if self.out_of_budget() or self.stopped:
            return None
        if self.queue:
            record = self.records[self.queue.pop(0)]
        else:
            number = max(self.records, default=0) + 1
            if number > self.evals:
                return None
            vals = self.suggester.suggest(number)
            record = TrialRecord(number, vals, self.suggester.values(vals))
            record.seen = sorted(self.suggester.known)
            self.records[number] = record
        record.status = "running"
        self.save()
        self.progress.task(trial_name(record.number))
        return record

    def epoch(self, number: int, epoch: int, epochs: int, curve: list[float]) -> bool:
        """A worker's trial finished an epoch: True to stop it."""
        record = self.records[number]
        record.curve = curve
        tell_epoch(self.progress, record, epoch, epochs)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.out_of_time.add(number)
            return True
        before = dict(record.rungs)
        stop = self.pruner.should_stop(record, curve, epochs)
        if record.rungs != before:
            self.save()  # the rung records survive a kill of this process
        return stop

    def finished(self, result: TrialRecord) -> None:
        """A trial ended (trained, pruned, failed): record it, tell TPE and the pruner."""
        record = self.records[result.number]
        for key in ("status", "metric", "best_epoch", "epochs_run", "reason", "run_dir"):
            setattr(record, key, getattr(result, key))
        record.tracking_run_id = result.tracking_run_id
        record.started_at, record.ended_at = result.started_at, result.ended_at
        record.seconds = result.seconds
        if result.curve:
            record.curve = result.curve
        if record.status == "pruned" and record.number in self.out_of_time:
            record.status, record.reason = "stopped", "the search ran out of time (max_minutes)"
            self.stopped = "max_minutes"
        elif record.status == "pruned":
            record.reason = why(self.s, record)
        self.suggester.add(record.number, record.vals, record.loss(self.maximise))
        self.pruner.finished(record)
        self.save()
        self._log_rungs(record)
        self.progress.done(trial_name(record.number), record)

    def died(self, number: int, reason: str) -> None:
        """A worker died under a trial: the trial failed; the search goes on."""
        record = self.records[number]
        record.status, record.reason = "failed", reason
        record.ended_at = time.time()
        if record.started_at is not None:
            record.seconds = record.ended_at - record.started_at
        mark_ended(self.search.trial_dir(number), "failed", reason)
        self.finished(record)

    def _log_rungs(self, record: TrialRecord) -> None:
        """The rung history of a trial, into its own MLflow run (best effort)."""
        if not (self.parent.uri and record.tracking_run_id):
            return
        with contextlib.suppress(Exception):
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.parent.uri)
            now = int(time.time() * 1000)
            name = f"rung_{self.s.metric}"
            batch = [Metric(name, float(v), now, int(e)) for e, v in record.rungs.items()]
            if batch:
                client.log_batch(record.tracking_run_id, metrics=batch)
            client.set_tag(record.tracking_run_id, "heart.rung", str(record.rung))

    def result(self, seconds: float, jobs: int) -> SearchResult:
        records = sorted(
            (r for r in self.records.values() if r.status != "running"), key=lambda r: r.number
        )
        return SearchResult(
            self.search_dir,
            self.s.metric,
            records,
            stopped=self.stopped,
            seconds=seconds,
            tracking_run_id=self.parent.run_id,
            keys=self.search.space.keys,
            jobs=jobs,
        )


def _worker_args(loop: Loop, jobs: int) -> WorkerArgs:
    return WorkerArgs(
        search=replace(loop.search, folder=loop.search_dir.resolve()),
        cwd=str(Path.cwd()),
        tracking_uri=loop.parent.uri,
        parent_run_id=loop.parent.run_id,
        threads=max(1, cores() // jobs),
    )


class _Trials:
    """The search loop's trials as a worker pool's jobs (workers.Jobs)."""

    def __init__(self, loop: Loop):
        self.loop = loop

    def assign(self, workers: list[Worker]) -> None:
        for w in workers:
            if w.ready and w.number is None:
                record = self.loop.next_trial()
                if record is None:
                    return
                w.number = record.number
                record.worker = w.process.pid
                self.loop.save()
                w.send(("trial", asdict(record)))

    def done(self, workers: list[Worker]) -> bool:
        return not any(w.number is not None for w in workers) and not self.loop.has_more()

    def handle(self, worker: Worker, message: Any) -> None:
        if message[0] == "epoch":
            _, number, epoch, epochs, curve = message
            worker.send(("decision", self.loop.epoch(number, epoch, epochs, curve)))
        elif message[0] == "done":
            worker.number = None
            self.loop.finished(TrialRecord(**message[1]))

    def died(self, worker: Worker) -> None:
        if worker.number is not None:
            self.loop.died(worker.number, worker.exit_reason())

    def more(self) -> bool:
        return self.loop.has_more()


def drive(loop: Loop, jobs: int) -> None:
    """Keep ``jobs`` workers busy until every trial has run (or the time is up)."""
    run_pool(_worker_args(loop, jobs), min(jobs, loop.remaining()), _Trials(loop))


def run_search(
    search: Search,
    *,
    evals: int | None = None,
    max_minutes: float | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
    lock: SearchLock | None = None,
) -> SearchResult:
    """Run (or continue) ``search`` until ``evals`` trials or the time is up, ``jobs`` trials
    at once (``evals``, ``max_minutes``: this invocation's budget, None = the search's own).
    The folder is locked for the while (``lock``: already held)."""
    started = time.perf_counter()
    progress = progress or Progress()
    if lock is None:
        read_state(search.folder)
        lock = SearchLock(search.folder)
        lock.acquire()
    try:
        loop = Loop(search, evals, max_minutes, progress)
        done = sum(r.status != "running" for r in loop.records.values())
        progress.start(
            start_summary(
                search,
                list(loop.records.values()),
                evals=loop.evals,
                done=done,
                parent_run_id=loop.parent.run_id,
                jobs=jobs,
            )
        )
        status = "completed"
        try:
            drive(loop, jobs)
            refit_stage(loop, jobs)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            result = loop.result(0.0, jobs)
            wrap_up(loop, result, status, started)
        return result
    finally:
        lock.release()


def refit_stage(loop: Loop, jobs: int) -> None:
    """``[search] refit``: once every trial has run, the top ones on K folds, then the
    recommendation (search/refit.py, search/final.py), on the same worker machinery."""
    from heartcli.search.final import run_refit
    from heartcli.search.refit import Hooks

    if not loop.s.refit or loop.stopped or loop.remaining() > 0:
        return
    hooks = Hooks(loop.save, loop.progress, loop.deadline, loop.parent.log_metrics)
    args = replace(_worker_args(loop, jobs), stage="refit")
    records = list(loop.records.values())
    run_refit(loop.search, loop.state, records, jobs=jobs, hooks=hooks, args=args)
    if loop.state["refit"].get("out_of_time"):
        loop.stopped = "max_minutes"


def wrap_up(loop: Loop, result: SearchResult, status: str, started: float) -> None:
    """Best links, the report, and the parent MLflow run's summary; done even after a failure."""
    from heartcli.search.final import link_result

    with contextlib.suppress(Exception):
        loop.save()
    with contextlib.suppress(Exception):
        link_result(loop.search, result, loop.state)
    result.stopped = loop.stopped
    result.seconds = time.perf_counter() - started
    tags = {"heart.pruner": str(loop.s.pruner)}
    finish(loop.search, result, loop.parent, status, tags=tags, artifacts=(CONFIG,))
