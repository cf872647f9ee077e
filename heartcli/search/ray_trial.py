"""What runs on a Ray node for one trial: the trainable, and the inbox its files go through.

A trial needs nothing from the driver's disk. Ray hands it the search's config as text (it
builds its :class:`~heartcli.search.spec.Search` once from it), the data from the object
store (the shared fold, or whole splits when the space changes the data or the validation
fold) and a handle on the :class:`Inbox`. It trains in a scratch
folder of its own node, and after every epoch puts the files that changed (checkpoint,
history, weights, manifest) into the inbox before it reports to Ray Tune: the one trial
runner (:func:`heartcli.search.trial.run_trial`) with :class:`RayHooks`. The driver takes
them from there into ``runs/NAME/trial-NNN`` and logs them to MLflow (ray_results.py).

The inbox lives on the head node and keeps each running trial's latest files, so a trial
Ray retries after its node was lost starts from its last epoch on whatever node it lands.
It also numbers the trials: one number per Ray trial id, the same on every retry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heartcli.config import HeartConfig
from heartcli.errors import HeartError, UsageError
from heartcli.search.metric import metric_value
from heartcli.search.records import TrialRecord, trial_name
from heartcli.search.spec import Search
from heartcli.search.trial import TrialHooks, run_trial
from heartcli.training import TrainingDiverged

# Files a trial folder gets on the driver; the tensorboard/ event files too (any subfolder).
Files = dict[str, bytes]


class Inbox:
    """Trial numbers and each trial's latest files, keyed by Ray's trial id (an actor)."""

    def __init__(
        self,
        numbers: dict[str, int],
        files: dict[str, Files],
        finals: dict[str, dict[str, Any]] | None = None,
    ):
        self._numbers = dict(numbers)
        self._files = {key: dict(f) for key, f in files.items()}
        # Trials a resumed search had finished while Ray's saved state still runs them.
        self._finals = dict(finals or {})
        self._fresh: dict[str, set[str]] = {}
        self._reasons: dict[str, str] = {}

    def number(self, key: str) -> int:
        """The trial's number, given on its first call and kept for its retries."""
        if key not in self._numbers:
            self._numbers[key] = max(self._numbers.values(), default=0) + 1
        return self._numbers[key]

    def final(self, key: str) -> dict[str, Any] | None:
        """The final report of a trial that already finished, if it did."""
        return self._finals.get(key)

    def put(self, key: str, files: Files) -> None:
        self._files.setdefault(key, {}).update(files)
        self._fresh.setdefault(key, set()).update(files)

    def files(self, key: str) -> Files:
        """Every file the trial has put so far (what a retry starts from)."""
        return self._files.get(key, {})

    def fresh(self, key: str) -> Files:
        """The files put since the last call (what the driver has not written yet)."""
        names = self._fresh.pop(key, set())
        kept = self._files.get(key, {})
        return {name: kept[name] for name in names if name in kept}

    def fail(self, key: str, reason: str) -> None:
        self._reasons[key] = reason

    def reason(self, key: str) -> str:
        return self._reasons.get(key, "")

    def drop(self, key: str) -> None:
        """A finished trial's files are on the driver's disk; free them here."""
        self._files.pop(key, None)
        self._fresh.pop(key, None)


def data_key(config: HeartConfig) -> str:
    """Which loaded dataset a trial trains on: its [data] dir, split and classes."""
    d = config.data
    return json.dumps([d.dir, d.split, d.classes], sort_keys=True)


def _changed(run_dir: Path, seen: dict[str, tuple[int, int]]) -> Files:
    """Files of ``run_dir`` new or changed since the last call (``seen`` is updated)."""
    out: Files = {}
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        name = path.relative_to(run_dir).as_posix()
        stat = path.stat()
        mark = (stat.st_size, stat.st_mtime_ns)
        if seen.get(name) != mark:
            seen[name] = mark
            out[name] = path.read_bytes()
    return out


def _restore(run_dir: Path, files: Files) -> bool:
    """Write a retried trial's files back; True when they hold a checkpoint to resume."""
    from heartcli.model import runs

    for name, data in files.items():
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return (run_dir / runs.CHECKPOINT).exists() and (run_dir / runs.MANIFEST).exists()


@dataclass
class RayHooks(TrialHooks):
    """A Ray trial's part of :func:`heartcli.search.trial.run_trial`: its data from the
    object store, its folder restored from the inbox, each epoch's files into the inbox
    before the report to Ray Tune, and its failures raised (Ray records them)."""

    key: str
    number: int
    datasets: dict[str, tuple[Any, Any]]
    inbox: Any
    failures = (TrainingDiverged, UsageError, RuntimeError, MemoryError)
    node: str = ""
    cfg: HeartConfig | None = None  # the trial's config, once configured
    run_dir: Path = Path()
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # files sent, by name
    stopped: bool = False  # by Ray's scheduler

    def configure(self, cfg: HeartConfig) -> None:
        cfg.tracking.enabled = False  # the driver logs every trial: one MLflow store
        if cfg.train.threads in (0, "auto"):
            cfg.train.threads = 1  # one core per trial; Ray schedules the rest
        self.cfg = cfg

    def data(self, cfg: HeartConfig) -> tuple[Any, Any]:
        if data_key(cfg) not in self.datasets:
            raise HeartError(f"no data was loaded for {data_key(cfg)}")
        train_data, val_data = self.datasets[data_key(cfg)]
        return _writable(train_data), _writable(val_data)

    def open(self, run_dir: Path) -> bool:
        import ray

        self.run_dir = run_dir
        run_dir.mkdir()
        resume = _restore(run_dir, ray.get(self.inbox.files.remote(self.key)))
        self.node = ray.get_runtime_context().get_node_id()
        _changed(run_dir, self.seen)  # what the inbox already holds is not sent again
        return resume

    def epoch(
        self, record: TrialRecord, info: Any, value: float | None, curve: list[float]
    ) -> bool:
        import ray
        from ray import tune

        assert self.cfg is not None
        if info.epoch >= self.cfg.train.epochs:
            return False  # the last epoch: the final report below carries it, never a stop
        ray.get(self.inbox.put.remote(self.key, _changed(self.run_dir, self.seen)))
        try:
            tune.report(
                {
                    self.cfg.search.metric: value,
                    "epoch": info.epoch,
                    "epochs": info.epochs,
                    "trial": self.number,
                    "node": self.node,
                    "final": False,
                }
            )
        except SystemExit:
            # Ray's scheduler stops a trial with sys.exit() inside report: the run ends as
            # pruned (manifest, curves), not as a failure.
            self.stopped = True
            return True
        return False

    def trained(self, result: Any) -> None:
        import ray
        from ray import tune

        assert self.cfg is not None
        ray.get(self.inbox.put.remote(self.key, _changed(self.run_dir, self.seen)))
        if self.stopped:
            return  # Ray wants no more reports from a trial it stopped
        metric = self.cfg.search.metric
        best_row: dict[str, Any] = next(
            (h for h in result.history if h["epoch"] == result.best_epoch), {}
        )
        tune.report(
            {
                metric: metric_value(metric, best_row),
                "epoch": result.epochs_run,
                "trial": self.number,
                "node": self.node,
                "final": True,
                "heart_status": result.status,
                "best_epoch": result.best_epoch,
            }
        )

    def fail(self, record: TrialRecord, reason: str) -> None:
        # The number leads the message: a trial that fails reports nothing else.
        raise HeartError(f"{trial_name(self.number)}: {reason}")


def trainable(
    sample: dict[str, Any],
    *,
    search_dir: str,
    config_text: str,
    datasets: dict[str, tuple[Any, Any]],
    inbox: Any,
) -> None:
    """One Ray trial: a `heart train` run in a scratch folder, its files through the inbox."""
    import ray
    from ray import tune

    from heartcli.config.sampling import flatten

    key = tune.get_context().get_trial_id()
    final = ray.get(inbox.final.remote(key))
    if final is not None:
        tune.report(final)  # finished before the driver stopped: nothing to train
        return
    number = ray.get(inbox.number.remote(key))
    search = Search.from_text(Path(search_dir), config_text)  # once, on this node
    record = TrialRecord(number, {}, flatten(search.space, sample))
    scratch = Path(tempfile.mkdtemp(prefix=f"heart-{trial_name(number)}-", dir=os.getcwd()))
    hooks = RayHooks(key, number, datasets, inbox)
    try:
        run_trial(search, record, scratch / trial_name(number), hooks)
    except HeartError as exc:
        ray.get(inbox.fail.remote(key, str(exc)))
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _writable(beats: Any) -> Any:
    """Ray's object store hands out read-only arrays; torch wants writable ones."""
    import dataclasses

    import numpy as np

    if beats is None:
        return None
    return dataclasses.replace(beats, x=np.array(beats.x), y=np.array(beats.y))
