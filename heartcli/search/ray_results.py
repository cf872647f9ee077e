"""The driver's side of Ray trials: their files onto the driver's disk, MLflow, search.json.

Ray Tune calls :class:`TrialLog` in the driver process as trials report, finish, fail or
are retried. For each, the :class:`Book` takes the trial's new files from the inbox
(ray_trial.py) into ``runs/NAME/trial-NNN``, logs its epochs, artifacts and status to a
nested MLflow run of the search, and keeps search.json and the live table up to date. So
every trial is in the driver's store and folder, whichever node ran it, and no node needs
the driver's disk or its tracking URI.

Ray pickles its callbacks with the experiment (for Tuner.restore); :class:`TrialLog` keeps
nothing but a hook into the one :class:`Book` of the search this process runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from heartcli.config import HeartConfig
from heartcli.config.sampling import flatten
from heartcli.data.dataset import MANIFEST as DATA_MANIFEST
from heartcli.errors import ConfigError, DataError
from heartcli.io import atomic_path, sha256_file
from heartcli.model import runs
from heartcli.progress import Progress
from heartcli.search.events import tell_epoch
from heartcli.search.metric import history, metric_value
from heartcli.search.records import TrialRecord, trial_config, trial_name
from heartcli.search.spec import Search
from heartcli.search.state import save_state
from heartcli.tracking import Tracker

EPOCH_METRICS = ("train_loss", "val_loss", "val_macro_f1", "lr", "beats_per_s")
ARTIFACTS = (
    runs.CONFIG,
    runs.CURVES,
    "val_confusion.png",
    runs.HISTORY,
    runs.MANIFEST,
    runs.WEIGHTS,  # the best weights: a trial can be exported from its MLflow run alone
)


@dataclass
class Book:
    """The driver's record of a Ray search while it runs."""

    search: Search  # its folder absolute
    state: dict[str, Any]
    parent_run_id: str | None
    inbox: Any
    progress: Progress = field(default_factory=Progress)
    records: dict[str, TrialRecord] = field(default_factory=dict)  # by Ray trial id
    trackers: dict[str, Tracker] = field(default_factory=dict)
    began: dict[str, float] = field(default_factory=dict)  # when this driver saw it start
    data_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # by [data] dir

    # ----------------------------------------------------------------- Ray's events

    def started(self, trial: Any) -> None:
        record = self._record(trial)
        self.progress.task(trial_name(record.number))

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        record = self._record(trial)
        if record.status != "running":
            return  # finished before a resume: Ray's saved state had it still running
        record.node = str(result.get("node") or record.node)
        self._take(record)
        if record.curve:
            epochs = int(result.get("epochs") or record.epochs_run)
            tell_epoch(self.progress, record, record.epochs_run, epochs)
        if result.get("final"):
            self._finish(record, str(result.get("heart_status") or "completed"))
        else:
            self.save()

    def complete(self, trial: Any) -> None:
        """Ended without a final report: a scheduler stopped it, or the time budget."""
        record = self._record(trial)
        if record.status != "running":
            return
        budget = self.search.s.max_minutes * 60
        if budget and time.time() - float(self.state.get("ray_started", 0)) >= budget:
            self._finish(record, "stopped", "the max_minutes budget ran out")
        else:
            pruner = self.search.s.pruner
            self._finish(record, "pruned", f"stopped by Ray's {pruner} scheduler")

    def error(self, trial: Any) -> None:
        record = self._record(trial)
        if record.status == "running":
            self._finish(record, "failed", self._why(trial))

    def recover(self, trial: Any) -> None:
        """Ray retries the trial (from its last epoch, through the inbox)."""
        record = self._record(trial)
        record.retries += 1
        record.reason = f"retry {record.retries} after: {self._why(trial)}"
        self.save()

    # ----------------------------------------------------------------- the steps

    def _record(self, trial: Any) -> TrialRecord:
        import ray

        key = str(trial.trial_id)
        if key not in self.records:
            number = int(ray.get(self.inbox.number.remote(key)))
            params = flatten(self.search.space, dict(trial.config or {}))
            run_dir = self.search.trial_dir(number)
            self.records[key] = TrialRecord(number, {}, params, run_dir=str(run_dir), key=key)
            self.save()  # the number is on disk before the trial's folder is (--resume)
        record = self.records[key]
        if key not in self.began:
            self.began[key] = time.time()
            record.started_at = record.started_at or self.began[key]
        return record

    def _why(self, trial: Any) -> str:
        """The trial's own reason (through the inbox), else Ray's error's first line."""
        import ray

        reason = str(ray.get(self.inbox.reason.remote(str(trial.trial_id))) or "")
        if reason:
            return reason.split(": ", 1)[1] if reason.startswith("trial-") else reason
        error: Any = None
        with contextlib.suppress(Exception):
            error = trial.get_pickled_error() or trial.get_error()
        text = str(getattr(error, "cause", None) or error or "")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        died = next((line for line in reversed(lines) if "died" in line or "Error" in line), "")
        return (died or (lines[-1] if lines else "the trial's process or node was lost"))[:300]

    def _tracker(self, record: TrialRecord) -> Tracker:
        """The trial's MLflow run (nested under the search's), made by the driver."""
        if record.key not in self.trackers:
            try:
                cfg = trial_config(self.search.config, record.params, record.number)
            except ConfigError:  # an impossible combination: its run still records it
                cfg = self.search.config.model_copy(deep=True)
            cfg.tracking.tensorboard = False  # the trial's own event files come with its folder
            run_dir = Path(record.run_dir)
            tracker = Tracker(
                cfg,
                run_dir,
                parent=self.parent_run_id,
                run_id=record.tracking_run_id or _child_run(cfg, self.parent_run_id, run_dir.name),
            )
            record.tracking_run_id = tracker.run_id
            self.trackers[record.key] = tracker
            self.save()  # a resumed search reopens this run, never makes a second one
        return self.trackers[record.key]

    def _take(self, record: TrialRecord) -> None:
        """The trial's new files into its folder; its new epochs into MLflow."""
        import ray

        files = ray.get(self.inbox.fresh.remote(record.key))
        run_dir = Path(record.run_dir)
        tracker = self._tracker(record)
        for name, data in files.items():
            path = run_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        if runs.MANIFEST in files:
            self._patch_manifest(record, tracker)
        rows = history(run_dir)
        for row in rows[record.epochs_run :]:
            tracker.log_metrics(_epoch_metrics(row), step=int(row["epoch"]))
        _score(record, self.search.metric, rows)

    def _patch_manifest(self, record: TrialRecord, tracker: Tracker) -> None:
        """What the trial's node could not know: the MLflow run and the data's identity."""
        run_dir = Path(record.run_dir)
        with contextlib.suppress(DataError, OSError, ValueError):
            manifest = runs.read_run_manifest(run_dir)
            manifest["tracking"] = {
                "uri": tracker.uri,
                "run_id": tracker.run_id,
                "parent_run_id": self.parent_run_id,
            }
            data = manifest.setdefault("data", {})
            rate, sha = self._data_info(str(data.get("dir", "")))
            if manifest.get("sampling_rate_hz") is None:
                manifest["sampling_rate_hz"] = rate
            if data.get("manifest_sha256") is None:
                data["manifest_sha256"] = sha
            runs.write_manifest(run_dir, manifest)

    def _data_info(self, data_dir: str) -> tuple[Any, str | None]:
        """(sampling rate, manifest SHA-256) of a dataset on the driver's disk."""
        if data_dir not in self.data_info:
            info: dict[str, Any] = {"rate": None, "sha": None}
            path = Path(data_dir) / DATA_MANIFEST
            with contextlib.suppress(OSError, ValueError):
                info["rate"] = json.loads(path.read_text(encoding="utf-8")).get("sampling_rate_hz")
                info["sha"] = sha256_file(path)
            self.data_info[data_dir] = info
        return self.data_info[data_dir]["rate"], self.data_info[data_dir]["sha"]

    def _finish(self, record: TrialRecord, status: str, reason: str = "") -> None:
        """Close a trial: last files, manifest, curves, MLflow artifacts and status."""
        import ray

        with contextlib.suppress(Exception):  # a lost node's files are what came before
            self._take(record)
        run_dir = Path(record.run_dir)
        retried = record.reason if record.retries else ""
        record.status, record.reason = status, reason or retried
        if status != "failed" and record.metric is None:
            record.status, record.reason = "failed", reason or "no epoch finished"
        _close_manifest(run_dir, record.status, record.reason)
        tracker = self._tracker(record)
        rows = history(run_dir)
        if rows and not (run_dir / runs.CURVES).exists():
            with contextlib.suppress(Exception):
                from heartcli import plots

                plots.curves([_numbers(r) for r in rows], run_dir / runs.CURVES)
        best = next((r for r in rows if int(r["epoch"]) == record.best_epoch), None)
        if best is not None and best.get("val_macro_f1") not in ("", None):
            best_f1 = float(best["val_macro_f1"])
            tracker.log_metrics({"best_val_macro_f1": best_f1}, step=record.best_epoch)
        tracker.set_tags({"heart.best_epoch": str(record.best_epoch)})
        if record.retries:
            tracker.set_tags({"heart.retries": str(record.retries)})
        for name in ARTIFACTS:
            tracker.log_artifact(run_dir / name)
        tracker.end(record.status)
        self.trackers.pop(record.key, None)
        record.ended_at = time.time()
        record.seconds += record.ended_at - self.began.pop(record.key, record.ended_at)
        with contextlib.suppress(Exception):
            ray.get(self.inbox.drop.remote(record.key))
        self.save()
        self.progress.done(trial_name(record.number), record)

    def interrupt(self) -> None:
        """The search stopped with trials running: their MLflow runs end KILLED, their
        folders say interrupted (``heart tune --resume`` continues them)."""
        for record in self.records.values():
            if record.status != "running":
                continue
            with contextlib.suppress(Exception):
                self._take(record)
            _close_manifest(Path(record.run_dir), "interrupted", "")
            if record.key in self.trackers:
                self.trackers.pop(record.key).end("interrupted")
            if record.key in self.began:
                record.seconds += time.time() - self.began.pop(record.key)
        self.save()

    def settle(self) -> None:
        """After Ray's last trial: a trial Ray no longer knows of (its state was saved
        before the trial started, and the driver stopped) fails, with the reason."""
        for record in self.records.values():
            if record.status == "running":
                self._finish(record, "failed", "lost with the driver before Ray saved it")

    def save(self) -> None:
        save_state(self.search.folder, self.state, list(self.records.values()))


def _child_run(config: HeartConfig, parent_run_id: str | None, name: str) -> str | None:
    """The run a trial already has under the search's (the driver stopped before it saved
    the run's id), or None."""
    if not (config.tracking.enabled and parent_run_id):
        return None
    from mlflow.tracking import MlflowClient

    from heartcli.tracking import tracking_uri

    with contextlib.suppress(Exception):
        client = MlflowClient(tracking_uri=tracking_uri(config))
        parent = client.get_run(parent_run_id)
        found = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and tags.mlflow.runName = '{name}'",
        )
        if found:
            return str(found[0].info.run_id)
    return None


def _close_manifest(run_dir: Path, status: str, reason: str) -> None:
    """A trial folder's manifest gets the status the driver decided, if it still runs."""
    with contextlib.suppress(DataError, OSError):
        manifest = runs.read_run_manifest(run_dir)
        if manifest.get("status") not in ("running", "interrupted"):
            return  # the trial finished it itself
        manifest["status"] = status
        if reason:
            manifest["reason"] = reason
        runs.write_manifest(run_dir, manifest)


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A history.csv row with its numbers as numbers."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = float(v) if v not in ("", None) else math.nan
        except (TypeError, ValueError):
            out[k] = v
    out["epoch"] = int(float(row["epoch"]))
    return out


def _epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """What `heart train` logs per epoch, from a history.csv row."""
    keys = [k for k in row if k in EPOCH_METRICS or k.startswith("val_recall_")]
    return {k: float(row[k]) for k in keys if row[k] not in ("", None)}


def _score(record: TrialRecord, metric: str, rows: list[dict[str, Any]]) -> None:
    """Curve, best epoch and metric of a trial from its history (the kept epoch)."""
    values = [metric_value(metric, row) for row in rows]
    record.curve = [v for v in values if v is not None]
    record.epochs_run = len(rows)
    scored = [
        (float(r["val_macro_f1"]), int(r["epoch"]), v)
        for r, v in zip(rows, values, strict=True)
        if v is not None and r.get("val_macro_f1") not in ("", None)
    ]
    if scored:
        best = max(scored, key=lambda t: (t[0], -t[1]))
        record.best_epoch, record.metric = best[1], best[2]


# The search this process runs: Ray's callbacks find it here (they are pickled with the
# experiment and come back through Tuner.restore without it).
_active: Book | None = None


def activate(book: Book | None) -> None:
    global _active
    _active = book


class TrialLog(Callback):
    """Ray Tune's driver-side hooks, handed to the active :class:`Book`."""

    def _book(self) -> Book:
        if _active is None:  # pragma: no cover (run_ray activates it before fit)
            raise RuntimeError("no heart search is running in this process")
        return _active

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._book().started(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._book().result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._book().complete(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._book().error(trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._book().recover(trial)
