"""The metric a search selects on: which way is better, and its value in a run's history."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


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
