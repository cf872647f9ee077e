"""What a search tells: its Progress as it runs, and the :class:`SearchResult` it returns.

A search tells its Progress (heartcli.progress): start(summary) once, task(trial-NNN) as a
trial starts, done("trial-NNN epoch E", figures) after each of its epochs, and
done(trial-NNN, its TrialRecord) as it ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartcli.search.best import BEST
from heartcli.search.records import TrialRecord, best_of, trial_name

if TYPE_CHECKING:  # annotations only
    from heartcli.progress import Progress
    from heartcli.search.spec import Search


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
