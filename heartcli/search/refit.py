"""The refit stage of `heart tune` (``[search] refit = m``, ``folds = K``): rungs, then folds.

Successive halving ranks the trials cheaply on the carved validation fold. Then the top
``m`` of them (:func:`candidates`: the trials that ran their course first, then the
furthest through the rungs, then by their value there) are trained again on K folds of the
whole training part, with the same machinery as `heart train --folds K`
(:func:`heartcli.training.oof.fold_groups`: stratified beats, or whole records for the
inter-patient split; the same folds for every trial, dealt from the search's
``[train] seed``). Fold ``i`` of trial ``n`` is a run folder ``trial-NNN/folds/fold-i``,
validated on its own fold; its best weights predict that fold (``fold-i/oof.npz``), and
the K parts become ``trial-NNN/oof.npz``: every training beat predicted by a model that
never trained on it. The trials are then ranked by out-of-fold macro-F1 (with its
bootstrap CI) and :mod:`heartcli.search.select` picks what the search recommends, which
:mod:`heartcli.search.final` writes as ``SEARCH/final``.

Each fold is one job for the worker processes of `--jobs` (workers.py): a worker loads the
training part once, trains the folds it is sent, asks the search after every epoch whether
to go on (so Ctrl-C, SIGTERM and ``max_minutes`` stop it at an epoch, its checkpoint
kept), and reports the fold's figures. Only the parent writes search.json, whose
``refit`` section records every fold: a finished fold is never trained again (`--resume`
reads it back), an unfinished one continues from its checkpoint, and a finished fold whose
folder is gone is one error line naming it (exit 1), never a silent retraining.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import HeartConfig
from heartcli.config.space import Space
from heartcli.errors import ConfigError, DataError, HeartError, UsageError
from heartcli.progress import Progress
from heartcli.search.records import (
    DONE,
    REFERENCE,
    TrialRecord,
    failure,
    trial_config,
    trial_name,
)
from heartcli.search.spec import Search
from heartcli.search.trial_dir import clear_trial_dir

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from heartcli.data.dataset import BeatSet

REFIT = "refit"  # search.json's section
FOLDS_DIR = "folds"  # as `heart train --folds K`: trial-NNN/folds/fold-<i>
OOF = "oof.npz"


# --------------------------------------------------------------------------- checks


def check_refit(config: HeartConfig, space: Space, evals: int | None = None) -> None:
    """``[search] refit`` and what it needs, before anything runs (exit 2): at most the
    trials the search runs (``evals``: this invocation's, else the config's), K folds of
    2 or more, a greedy ensemble only over refitted trials, no data key in the space."""
    s = config.search
    evals = s.evals if evals is None else evals
    if s.ensemble == "greedy" and s.refit < 2:
        raise UsageError(
            f'search.ensemble = "greedy" chooses among the refitted trials, and search.refit '
            f"= {s.refit} refits {'none' if s.refit == 0 else 'one'}; set search.refit to 2 "
            "or more (with search.folds = K), or search.ensemble = 0"
        )
    if not s.refit:
        return
    if s.refit > evals:
        raise UsageError(
            f"search.refit = {s.refit}: the search runs {evals} trials; lower search.refit "
            f"to at most {evals}, or raise search.evals (--evals)"
        )
    if s.folds < 2:
        raise UsageError(
            f"search.folds = {s.folds}: search.refit = {s.refit} trains each trial again on "
            "K folds; set search.folds to 2 or more (e.g. 3)"
        )
    if isinstance(s.ensemble, int) and s.ensemble:
        raise UsageError(
            f"search.ensemble = {s.ensemble} averages the top trials as they are; with "
            'search.refit use search.ensemble = "greedy" (weights chosen out of fold) or 0'
        )
    moved = [k for k in space.keys if k.startswith("data.")]
    if moved:
        raise UsageError(
            f"search.refit: the space changes the data ({', '.join(moved)}), so the refitted "
            "trials would predict different beats; take data keys out of the space, or set "
            "search.refit = 0"
        )


def fold_dir(search: Search, number: int, fold: int) -> Path:
    return search.trial_dir(number) / FOLDS_DIR / f"fold-{fold}"


def check_folders(search: Search, state: dict[str, Any]) -> None:
    """Every fold search.json records as finished is still on disk (weights and its
    out-of-fold part); a lost one is one DataError line naming it (exit 1)."""
    from heartcli.model.runs import WEIGHTS

    book = state.get(REFIT) or {}
    for number, trial in (book.get("trials") or {}).items():
        for fold, entry in (trial.get("folds") or {}).items():
            if entry.get("status") != "completed":
                continue
            where = fold_dir(search, int(number), int(fold))
            missing = [p for p in (where / WEIGHTS, where / OOF) if not p.is_file()]
            if missing:
                raise DataError(
                    f"{where}: a fold the refit stage finished is gone ({missing[0].name} "
                    "missing); heart never trains a finished fold again: restore the folder, "
                    "or start the search again under a new --name"
                )


# --------------------------------------------------------------------------- choosing


def candidates(records: list[TrialRecord], maximise: bool, m: int) -> list[TrialRecord]:
    """Successive halving's top ``m``: trials that ran their course first, then the ones
    that went furthest through the rungs, then by their value (the best value they
    reached); ties go to the earlier trial."""
    sign = 1.0 if maximise else -1.0
    scored = [r for r in records if r.status in DONE and r.metric is not None]
    return sorted(
        scored,
        key=lambda r: (r.status not in REFERENCE, -r.rung, -sign * (r.metric or 0.0), r.number),
    )[:m]


def refit_groups(config: HeartConfig, beats: BeatSet) -> list[np.ndarray]:
    """The K validation groups every refitted trial shares (the search's own seed)."""
    from heartcli.training.oof import fold_groups

    return fold_groups(config.data.split, beats, config.search.folds, config.train.seed)


def training_part(config: HeartConfig) -> BeatSet:
    from heartcli.data.dataset import load_split

    return load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)


# --------------------------------------------------------------------------- a worker's side

# (trial, fold, epoch, epochs, value) -> True to stop the fold at this epoch
FoldAsk = Callable[[int, int, int, int, float], bool]


def serve_folds(conn: Connection, search: Search, threads: int) -> None:
    """A worker of the refit stage: the training part once, then every fold it is sent."""
    try:
        beats = training_part(search.config)
        groups = refit_groups(search.config, beats)
    except HeartError as exc:
        conn.send(("error", str(exc), exc.exit_code))
        return

    def ask(number: int, fold: int, epoch: int, epochs: int, value: float) -> bool:
        conn.send(("fold-epoch", number, fold, epoch, epochs, value))
        reply = conn.recv()
        if reply[0] == "exit":  # the search stops: this fold ends at its checkpoint
            raise KeyboardInterrupt
        return bool(reply[1])

    conn.send(("ready",))
    while True:
        message = conn.recv()
        if message[0] != "fold":
            return
        conn.send(("fold-done", train_fold(search, message[1], beats, groups, ask, threads)))


def train_fold(
    search: Search,
    job: dict[str, Any],
    beats: BeatSet,
    groups: list[np.ndarray],
    ask: FoldAsk,
    threads: int,
) -> dict[str, Any]:
    """Train fold ``job["fold"]`` of trial ``job["number"]`` (continued from its checkpoint
    when it has one), then its best weights' probabilities on its own fold; the fold's
    figures, or its failure, as plain values (Ctrl-C: KeyboardInterrupt)."""
    from heartcli.search.trial import trial_threads
    from heartcli.training import train
    from heartcli.training.oof import fold_proba, save_oof

    number, fold = int(job["number"]), int(job["fold"])
    out: dict[str, Any] = {"number": number, "fold": fold, "status": "failed", "reason": ""}
    started = time.perf_counter()
    where = fold_dir(search, number, fold)
    try:
        cfg = trial_config(search.config, job["params"], number)
        cfg.train.threads = trial_threads(cfg.train.threads, threads)
        cfg.tracking.enabled = False  # the search's MLflow run gets the refit's figures
        resume = clear_trial_dir(where, None, None)
        val = groups[fold - 1]
        rest = np.ones(len(beats), dtype=bool)
        rest[val] = False
        val_beats = beats.subset(val)
        result = train(
            cfg,
            where,
            resume=resume,
            on_epoch=lambda i: ask(number, fold, i.epoch, i.epochs, float(i.val_macro_f1)),
            train_data=beats.subset(np.flatnonzero(rest)),
            val_data=val_beats,
            config_base=search.document(),
        )
        if result.status == "interrupted":
            raise KeyboardInterrupt
        if result.status == "pruned":  # out of time: continued by --resume
            out.update(status="stopped", reason="the search ran out of time (max_minutes)")
            return out
        save_oof(where, [val], beats.y, [fold_proba(where, val_beats)])
    except ConfigError as exc:
        out["reason"] = "; ".join(exc.problems)
        return out
    except (HeartError, OSError, RuntimeError, MemoryError) as exc:
        out["reason"] = failure(exc)
        return out
    out.update(
        status="completed",
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        metric=round(float(result.best_metric), 4),
        seconds=round(time.perf_counter() - started, 1),
    )
    return out


# --------------------------------------------------------------------------- the parent's side


@dataclass
class Hooks:
    """What the parent's refit loop needs from the search that runs it."""

    save: Callable[[], None]  # write search.json (the parent's state, with its refit section)
    progress: Progress
    deadline: float | None  # time.monotonic() at which the search's budget ends
    log: Callable[[dict[str, float], int], None]  # into the search's MLflow run (metrics, step)


class Refit:
    """The parent's record of the refit stage: which trials, which folds are done, and
    their out-of-fold figures, kept in ``state["refit"]`` (search.json)."""

    def __init__(
        self, search: Search, state: dict[str, Any], records: list[TrialRecord], hooks: Hooks
    ):
        self.search, self.state, self.hooks = search, state, hooks
        s = search.s
        self.k = s.folds
        self.book: dict[str, Any] = state.setdefault(REFIT, {})
        self.book.update({"refit": s.refit, "folds": s.folds, "seed": search.config.train.seed})
        self.book.setdefault("trials", {})
        self.book.setdefault("started_at", time.time())
        chosen = candidates(records, search.maximise, s.refit)
        self.records = {r.number: r for r in chosen}
        self.book["order"] = [r.number for r in chosen]
        for r in chosen:
            entry = self.book["trials"].setdefault(str(r.number), {"folds": {}})
            entry.update(metric=r.metric, status=r.status, rung=r.rung)
            entry.setdefault("refit", "pending")
        self.out_of_time = False

    # ----------------------------------------------------------------- the jobs

    def entry(self, number: int) -> dict[str, Any]:
        return self.book["trials"][str(number)]

    def pending(self) -> list[dict[str, Any]]:
        """The folds still to train, trial by trial in rank order."""
        jobs = []
        for number in self.book["order"]:
            folds = self.entry(number)["folds"]
            for fold in range(1, self.k + 1):
                if (folds.get(str(fold)) or {}).get("status") != "completed":
                    params = self.records[number].params
                    jobs.append({"number": number, "fold": fold, "params": params})
        return jobs

    def started(self, job: dict[str, Any]) -> None:
        number, fold = job["number"], job["fold"]
        entry = self.entry(number)
        entry["refit"] = "running"
        entry["folds"][str(fold)] = {"status": "running", "started_at": time.time()}
        self.hooks.save()
        self.hooks.progress.stage(
            f"refit {trial_name(number)}: fold {fold} of {self.k} (trains on the other "
            f"{self.k - 1}, validates and predicts on this one)"
        )

    def epoch(self, number: int, fold: int, epoch: int, epochs: int, value: float) -> bool:
        """A fold finished an epoch: True to stop it (the search's time is up)."""
        figures: dict[str, Any] = {"refit": number, "fold": fold, "folds": self.k}
        figures.update(epoch=epoch, epochs=epochs, value=value)
        self.hooks.progress.done(f"refit {trial_name(number)} fold {fold} epoch {epoch}", figures)
        deadline = self.hooks.deadline
        if deadline is not None and time.monotonic() >= deadline and epoch < epochs:
            self.out_of_time = True
            return True
        return False

    def fold_done(self, result: dict[str, Any]) -> None:
        number, fold = int(result["number"]), int(result["fold"])
        entry = self.entry(number)
        kept = entry["folds"].get(str(fold)) or {}
        entry["folds"][str(fold)] = {**kept, **result, "ended_at": time.time()}
        if result["status"] == "failed":
            entry.update(refit="failed", reason=f"fold {fold}: {result['reason']}")
        elif result["status"] == "completed" and self._complete(number):
            self._assemble(number)
        self.hooks.save()
        shown = {"refit": number, **result}
        self.hooks.progress.done(f"refit {trial_name(number)} fold {fold}", shown)

    def died(self, job: dict[str, Any], reason: str) -> None:
        """The worker under a fold died: the fold failed (a --resume trains it again)."""
        self.fold_done({"number": job["number"], "fold": job["fold"], "status": "failed",
                        "reason": reason})  # fmt: skip

    def _complete(self, number: int) -> bool:
        folds = self.entry(number)["folds"]
        return all(
            (folds.get(str(f)) or {}).get("status") == "completed" for f in range(1, self.k + 1)
        )

    def _assemble(self, number: int) -> None:
        """Trial ``number``'s K folds done: its out-of-fold predictions and figures."""
        from heartcli.model.runs import read_run_manifest
        from heartcli.training.oof import oof_figures

        oof = assemble_oof(self.search, number, self.k)
        classes = [str(c) for c in read_run_manifest(fold_dir(self.search, number, 1))["classes"]]
        figures = oof_figures(oof["y"], oof["proba"], classes)
        entry = self.entry(number)
        folds = entry["folds"].values()
        entry.update(
            refit="completed",
            oof=figures,
            classes=classes,
            ended_at=time.time(),
            seconds=round(sum(float(f.get("seconds") or 0.0) for f in folds), 1),
        )
        self.hooks.log({"refit_oof_macro_f1": figures["macro_f1"]}, number)
        self.hooks.progress.done(f"refit {trial_name(number)}", {**entry, "refit": number})

    def finished(self) -> list[int]:
        """The refitted trials, by out-of-fold macro-F1 (best first; ties: earlier trial)."""
        done = [int(n) for n, e in self.book["trials"].items() if e.get("refit") == "completed"]
        done = [n for n in done if n in self.records]
        return sorted(done, key=lambda n: (-float(self.entry(n)["oof"]["macro_f1"]), n))


def assemble_oof(search: Search, number: int, k: int) -> dict[str, np.ndarray]:
    """The K folds' parts of trial ``number`` as one ``trial-NNN/oof.npz`` (and returned)."""
    from heartcli.training.oof import read_oof, save_oof

    parts = []
    for fold in range(1, k + 1):
        part = read_oof(fold_dir(search, number, fold))
        if part is None:
            where = fold_dir(search, number, fold)
            raise DataError(f"{where}: its out-of-fold predictions ({OOF}) are unreadable")
        parts.append(part)
    n = int(sum(len(p["index"]) for p in parts))
    y = np.zeros(n, dtype=np.int64)
    for p in parts:
        y[p["index"]] = p["y"]
    save_oof(search.trial_dir(number), [p["index"] for p in parts], y, [p["proba"] for p in parts])
    oof = read_oof(search.trial_dir(number))
    assert oof is not None
    return oof
