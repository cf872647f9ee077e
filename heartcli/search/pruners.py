"""Stopping poor trials early: successive halving (ASHA) and the median stopping rule.

Both see a trial's metric after every epoch and answer "stop" or "go on"; neither ever
stops a trial at its last epoch (nothing is left to save). Values are compared as
"higher is better": a loss metric is negated first.

ASHA (asynchronous successive halving, Li et al. 2018) follows Ray Tune's
``AsyncHyperBandScheduler`` with one bracket: rungs at ``min_epochs x factor^k`` epochs (up
to the most epochs a trial can run). When a trial reaches a rung, its value at that epoch is
compared with the values recorded at that rung so far: it goes on only if it is not below
their ``(1 - 1/factor)`` quantile (numpy's ``nanpercentile``, linear), i.e. if it is in the
top ``1/factor``; then its value joins the rung's record. The first trial at a rung always
goes on, and nothing waits for a rung to fill.

The median stopping rule: after ``warmup_epochs``, once ``min_trials`` trials have run
their course (completed or early-stopped), a trial whose best so far at epoch ``k`` is below
the median of those trials' best so far at epoch ``k`` (their last value when they stopped
earlier) is stopped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from heartcli.config import SearchConfig
from heartcli.search.records import REFERENCE, TrialRecord


def running_best(curve: list[float], maximise: bool) -> list[float]:
    out: list[float] = []
    for v in curve:
        out.append(v if not out else (max(out[-1], v) if maximise else min(out[-1], v)))
    return out


class Pruner(Protocol):
    """Decides after each epoch of a trial; ``record`` gets the rung (if any) it reached."""

    def should_stop(self, record: TrialRecord, curve: list[float], epochs: int) -> bool: ...
    def finished(self, record: TrialRecord) -> None: ...


class NoPruner:
    def should_stop(self, record: TrialRecord, curve: list[float], epochs: int) -> bool:
        return False

    def finished(self, record: TrialRecord) -> None:
        return None


def rungs(min_epochs: int, factor: int, max_epochs: int) -> list[int]:
    """The rung epochs: min_epochs x factor^k up to ``max_epochs``."""
    out = []
    epoch = min_epochs
    while epoch <= max_epochs:
        out.append(epoch)
        epoch *= factor
    return out


class Asha:
    """Successive halving without waiting: the shared rung records of one search."""

    def __init__(
        self,
        min_epochs: int,
        factor: int,
        max_epochs: int,
        maximise: bool,
        records: Iterable[TrialRecord] = (),
    ):
        self.milestones = rungs(min_epochs, factor, max_epochs)
        self.factor = factor
        self.maximise = maximise
        # epoch -> {trial number: value} (as the search recorded it; rebuilt on resume)
        self.recorded: dict[int, dict[int, float]] = {m: {} for m in self.milestones}
        for r in records:
            for epoch, value in r.rungs.items():
                self.recorded.setdefault(int(epoch), {})[r.number] = value

    def cutoff(self, epoch: int) -> float | None:
        """The lowest (sign-adjusted) value that goes on at rung ``epoch``; None when empty."""
        values = [self._signed(v) for v in self.recorded.get(epoch, {}).values()]
        if not values:
            return None
        return float(np.nanpercentile(values, (1 - 1 / self.factor) * 100))

    def _signed(self, value: float) -> float:
        return value if self.maximise else -value

    def should_stop(self, record: TrialRecord, curve: list[float], epochs: int) -> bool:
        epoch = len(curve)
        if epoch not in self.recorded or record.number in self.recorded[epoch]:
            return False
        value = curve[-1]
        cutoff = self.cutoff(epoch)
        stop = cutoff is not None and not math.isnan(value) and self._signed(value) < cutoff
        if not math.isnan(value):
            self.recorded[epoch][record.number] = value
            record.rungs[str(epoch)] = value
        return stop and epoch < epochs

    def finished(self, record: TrialRecord) -> None:
        return None


class MedianStopper:
    """The median stopping rule over the finished trials' learning curves."""

    def __init__(
        self,
        curves: Iterable[list[float]],
        warmup: int,
        min_trials: int,
        maximise: bool,
    ):
        self.curves = [running_best(c, maximise) for c in curves if c]
        self.warmup = warmup
        self.min_trials = min_trials
        self.maximise = maximise

    def median_at(self, epoch: int) -> float | None:
        """Median of the finished trials' best-so-far at ``epoch`` (their last, if shorter)."""
        if len(self.curves) < self.min_trials:
            return None
        return statistics.median(c[min(epoch, len(c)) - 1] for c in self.curves)

    def stops(self, curve: list[float]) -> bool:
        epoch = len(curve)
        if epoch <= self.warmup or not curve:
            return False
        median = self.median_at(epoch)
        if median is None:
            return False
        best = running_best(curve, self.maximise)[-1]
        return best < median if self.maximise else best > median

    def should_stop(self, record: TrialRecord, curve: list[float], epochs: int) -> bool:
        return len(curve) < epochs and self.stops(curve)

    def finished(self, record: TrialRecord) -> None:
        if record.status in REFERENCE and record.curve:
            self.curves.append(running_best(record.curve, self.maximise))


def make_pruner(
    s: SearchConfig, max_epochs: int, maximise: bool, records: list[TrialRecord]
) -> Pruner:
    """The ``[search] pruner`` of a search, primed with its finished trials."""
    if s.pruner == "asha":
        return Asha(s.min_epochs, s.reduction_factor, max_epochs, maximise, records)
    if s.pruner == "median":
        done = [r.curve for r in records if r.status in REFERENCE]
        return MedianStopper(done, s.warmup_epochs, s.min_trials, maximise)
    return NoPruner()


def why(s: SearchConfig, record: TrialRecord) -> str:
    """The reason recorded for a pruned trial."""
    if s.pruner == "asha":
        value = record.rungs.get(str(record.rung))
        shown = f"{value:.4f}" if value is not None else "-"
        return f"below the top 1/{s.reduction_factor} at rung {record.rung} ({shown})"
    return f"below the median at epoch {record.epochs_run}"
