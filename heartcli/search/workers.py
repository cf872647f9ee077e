"""Trials in worker processes: ``--jobs N`` runs N at once, each with ``cores // N`` threads.

Only the parent process (the search loop in tpe.py) writes search.json and keeps the
pruner's rung records; a worker trains one trial at a time and, after every epoch, asks the
parent over its pipe whether to go on. So the state stays consistent whatever dies:

- a worker killed (kill -9, out of memory): the parent sees its pipe close, marks its trial
  failed (folder and MLflow run too), starts a fresh worker and goes on;
- the parent killed: every worker notices at once (it watches the parent's process
  sentinel) and exits, so nothing writes into the search after its owner is gone; the
  trials that were running stay "running" in search.json and `--resume` continues them.

Workers are started with multiprocessing's "spawn" method (no fork of a process that has
torch threads), get the search (:class:`~heartcli.search.spec.Search`, pickled: its config
is never read again), load the shared data themselves, then wait for trials.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol

from heartcli.errors import HeartError, UsageError

if TYPE_CHECKING:  # the search package loads torch: imported in the worker
    from heartcli.search.spec import Search

# Measured with benchmarks/bench_tune.py --only threads on this project's 2-core machine,
# shared with other work (docs/measurements.md, "heart tune"): two one-thread quickstart
# trials side by side took 20 s, while one two-thread trial spent 10 minutes on its first
# epoch (its threads wait on each other at every operation when the cores are busy). So
# `--jobs auto` runs one one-thread trial per core.
AUTO_TRIALS_PER_CORE = 1


def cores() -> int:
    """CPU cores this process may use (affinity and cgroup quota)."""
    from heartcli.threads import usable_cpus

    return usable_cpus()


def resolve_jobs(jobs: str | int | None, cluster: bool = False) -> int:
    """``--jobs``: a number from 1 to the cores, or "auto"; exit 2 otherwise.

    ``cluster``: trials run on a Ray cluster, whose cores are not this machine's: any
    number from 1 up.
    """
    n = cores()
    if jobs is None:
        return 1
    if isinstance(jobs, str) and jobs.strip().lower() == "auto":
        return max(1, n * AUTO_TRIALS_PER_CORE)
    try:
        value = int(jobs)
    except ValueError:
        raise UsageError(f'--jobs: "{jobs}" is not a number; use 1 to {n} or "auto"') from None
    from heartcli.config import MAX_THREADS

    if cluster and not 1 <= value <= MAX_THREADS:
        raise UsageError(f"--jobs: {value} is not a number of trials at once (1 to {MAX_THREADS})")
    if not cluster and not 1 <= value <= n:
        raise UsageError(f"--jobs: {value} is not between 1 and the {n} cores here (or auto)")
    return value


@dataclass
class WorkerArgs:
    """What a worker needs to set itself up (picklable)."""

    search: Search  # its folder absolute
    cwd: str
    tracking_uri: str | None
    parent_run_id: str | None
    threads: int
    stage: str = "trials"  # or "refit": the folds of the refit stage (search/refit.py)


def _watch_parent() -> None:
    """Exit at once when the parent process dies (kill -9 leaves no one to tell us)."""
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="heart-parent-watch").start()


def worker_main(conn: Connection, args: WorkerArgs) -> None:
    """A worker process: set up once, then train the trials the parent sends."""
    _watch_parent()
    try:
        _serve(conn, args)
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # Ctrl-C reaches every process; the parent handles the search's state
    finally:
        conn.close()
    exit_now()


def exit_now() -> None:
    """End the worker without the interpreter's teardown: with torch loaded it takes most
    of a second (benchmarks/bench_tune.py --only exit), and the parent waits for it at the
    end of every trial pool and refit stage. Nothing is left to write: a trial's files,
    checkpoint and MLflow calls (MlflowClient, synchronous) are done before its "done"
    message, and TensorBoard's writer is closed by the trial. An exception out of _serve
    does not come here: it ends the process as usual, its traceback on stderr."""
    import contextlib
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def _serve(conn: Connection, args: WorkerArgs) -> None:
    from heartcli.search.records import TrialRecord
    from heartcli.search.trial import AskParent, run_trial, shared_folds

    os.chdir(args.cwd)
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    search = args.search
    if args.stage == "refit":
        from heartcli.search.refit import serve_folds

        serve_folds(conn, search, args.threads)
        return
    try:
        train_data, val_data = shared_folds(search)
    except HeartError as exc:
        conn.send(("error", str(exc), exc.exit_code))
        return

    def ask(number: int, epoch: int, epochs: int, curve: list[float]) -> bool:
        conn.send(("epoch", number, epoch, epochs, curve))
        reply = conn.recv()
        if reply[0] == "exit":
            # The search is stopping (Ctrl-C or SIGTERM of heart tune) while this trial waits
            # for its answer: end the trial as interrupted (its checkpoint is saved) for --resume.
            raise KeyboardInterrupt
        return bool(reply[1])

    hooks = AskParent(
        ask,
        train_data,
        val_data,
        args.threads,
        tracking_parent=args.parent_run_id,
        tracking_uri=args.tracking_uri,
    )
    conn.send(("ready",))
    while True:
        message = conn.recv()
        if message[0] != "trial":
            return
        record = TrialRecord(**message[1])
        run_trial(search, record, search.trial_dir(record.number), hooks)
        conn.send(("done", asdict(record)))


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, args: WorkerArgs):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=worker_main, args=(child, args), daemon=True, name="heart-tune-worker"
        )
        self.process.start()
        child.close()
        self.ready = False
        self.number: int | None = None  # the trial it runs
        self.job: dict[str, Any] | None = None  # the fold it trains (the refit stage)

    def send(self, message: Any) -> bool:
        """False when the worker is gone."""
        try:
            self.conn.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False

    def messages(self) -> tuple[list[Any], bool]:
        """The messages waiting, and whether the worker is still alive."""
        out: list[Any] = []
        try:
            while self.conn.poll():
                out.append(self.conn.recv())
        except (EOFError, ConnectionResetError, OSError):
            return out, False
        return out, self.process.is_alive()

    def exit_reason(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            import signal

            return f"the worker process was killed ({signal.Signals(-code).name})"
        return f"the worker process died (exit code {code})"

    def stop(self, timeout: float = 10.0) -> None:
        stop_all([self], timeout)


KILL_GRACE_S = 3.0  # after SIGTERM: a stopped (SIGSTOP) worker never acts on it


def stop_all(workers: list[Worker], timeout: float = 10.0) -> None:
    """Ask every worker to exit, wait ``timeout`` seconds for all of them together, then
    SIGTERM the rest, and SIGKILL whatever is still there after KILL_GRACE_S: no wait
    without a limit, even for a worker stopped with SIGSTOP."""
    for w in workers:
        w.send(("exit",))
    _join_all(workers, timeout)
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()
    _join_all(workers, KILL_GRACE_S)
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=KILL_GRACE_S)
        w.conn.close()


def _join_all(workers: list[Worker], seconds: float) -> None:
    """Wait for the workers to end, ``seconds`` for all of them together."""
    import time

    deadline = time.monotonic() + seconds
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- the pool


class Jobs(Protocol):
    """What a pool of workers runs: the trials of the search loop (tpe.py) or the refit
    stage's folds (below). Only the parent calls these; they keep search.json."""

    def assign(self, workers: list[Worker]) -> None:
        """Give every ready worker without a job its next one, while any are left."""

    def done(self, workers: list[Worker]) -> bool:
        """Nothing runs and nothing more will start: the pool can end."""

    def handle(self, worker: Worker, message: Any) -> None:
        """A worker's message about its job (not "ready" or "error")."""

    def died(self, worker: Worker) -> None:
        """The worker died; its job, if it had one, ends as failed."""

    def more(self) -> bool:
        """Jobs are left to start: a worker that died is replaced."""


def run_pool(args: WorkerArgs, count: int, jobs: Jobs) -> None:
    """Keep ``count`` workers busy with ``jobs`` until ``jobs.done``; a worker that dies
    fails its job and is replaced while jobs are left; every worker is stopped however the
    pool ends (stop_all: bounded, even for a stopped worker)."""
    from multiprocessing.connection import wait

    workers = [Worker(args) for _ in range(count)]
    try:
        while True:
            jobs.assign(workers)
            if jobs.done(workers):
                return
            ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers])
            for w in list(workers):
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                messages, alive = w.messages()
                for message in messages:
                    _common(jobs, w, message)
                if alive:
                    continue
                workers.remove(w)
                if not w.ready:
                    raise HeartError(f"a search worker could not start: {w.exit_reason()}")
                jobs.died(w)
                if jobs.more():
                    workers.append(Worker(args))
    finally:
        stop_all(workers)


def _common(jobs: Jobs, worker: Worker, message: Any) -> None:
    kind = message[0]
    if kind == "error":  # the worker could not load the search's data: nothing can run
        raise (UsageError if message[2] == 2 else HeartError)(message[1])
    if kind == "ready":
        worker.ready = True
    else:
        jobs.handle(worker, message)


# --------------------------------------------------------------------------- the refit stage


def drive_folds(refit: Any, args: WorkerArgs, jobs: int) -> None:
    """The refit stage's loop (``refit``: search/refit.py's ``Refit``): keep ``jobs``
    workers busy with its pending folds until every one has run, or the search's time is
    up. Each worker trains one fold at a time (``serve_folds``) and asks after every epoch."""
    folds = _Folds(refit)
    run_pool(args, min(jobs, len(folds.queue)), folds)


class _Folds:
    """The refit stage's folds as a pool's jobs (``Jobs``)."""

    def __init__(self, refit: Any):
        self.refit = refit
        self.queue: list[dict[str, Any]] = refit.pending()

    def late(self) -> bool:
        deadline = self.refit.hooks.deadline
        if self.refit.out_of_time or (deadline is not None and time.monotonic() >= deadline):
            self.refit.out_of_time = True
        return bool(self.refit.out_of_time)

    def assign(self, workers: list[Worker]) -> None:
        for w in workers:
            if w.ready and w.job is None and self.queue and not self.late():
                w.job = self.queue.pop(0)
                self.refit.started(w.job)
                w.send(("fold", w.job))

    def done(self, workers: list[Worker]) -> bool:
        return all(w.job is None for w in workers) and (not self.queue or self.late())

    def handle(self, worker: Worker, message: Any) -> None:
        if message[0] == "fold-epoch":
            worker.send(("decision", self.refit.epoch(*message[1:])))
        elif message[0] == "fold-done":
            worker.job = None
            self.refit.fold_done(message[1])

    def died(self, worker: Worker) -> None:
        if worker.job is not None:
            self.refit.died(worker.job, worker.exit_reason())

    def more(self) -> bool:
        return bool(self.queue) and not self.late()
