"""What a search found, for people: the top trials, and the successive-halving picture.

``build_report`` reads search.json (atomically written, so a running search can be read at
any time) and gives plain data: the top trials with their parameters, the rung each
reached and its wall time; each trial's curve; the best value so far against wall time.
``write_report`` puts it in ``report.json`` and draws ``report.png``: every trial's
validation metric per epoch (pruned trials end at a rung) beside the best so far against
wall-clock minutes. ``finish`` writes them at a search's end and closes the search's own
MLflow run (both backends).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from heartcli.io import atomic_path, write_json
from heartcli.search.pruners import rungs
from heartcli.search.spec import Search
from heartcli.search.state import (
    BEST_CONFIG,
    STATE,
    SearchResult,
    TrialRecord,
    best_of,
    read_state,
    records_of,
    trial_name,
)

TOP = 10
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


def _row(r: TrialRecord) -> dict[str, Any]:
    return {
        "number": r.number,
        "status": r.status,
        "metric": r.metric,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "rung": r.rung,
        "seconds": round(r.seconds, 2),
        "params": r.params,
    }


def _best_so_far(records: list[TrialRecord], maximise: bool) -> list[dict[str, Any]]:
    """(minutes since the first trial started, best so far, the trial's own value) at each
    scored trial's end."""
    ended = sorted(
        (r for r in records if r.ended_at is not None and r.metric is not None and r.finished),
        key=lambda r: r.ended_at or 0.0,
    )
    starts = [r.started_at for r in records if r.started_at is not None]
    if not ended or not starts:
        return []
    origin = min(starts)
    points: list[dict[str, Any]] = []
    best: float | None = None
    for r in ended:
        value = float(r.metric)  # type: ignore[arg-type]
        if best is None or (value > best if maximise else value < best):
            best = value
        minutes = ((r.ended_at or origin) - origin) / 60
        points.append(
            {"minutes": round(minutes, 3), "best": best, "trial": r.number, "value": value}
        )
    return points


def build_report(search: Search, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's data of a search (finished or running): its search.json as it is now
    (``state``: just read)."""
    search_dir = search.folder
    state = read_state(search_dir) if state is None else state
    s = search.s
    records = records_of(state)
    maximise = search.maximise
    scored = [r for r in records if r.finished and r.metric is not None]
    scored.sort(key=lambda r: (-(r.metric or 0.0) if maximise else r.metric, r.number))
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    most = search.max_epochs
    best = best_of(records, maximise)
    return {
        "search_dir": str(search_dir),
        "metric": s.metric,
        "pruner": s.pruner,
        "rungs": rungs(s.min_epochs, s.reduction_factor, most) if s.pruner == "asha" else [],
        "evals": state.get("evals"),
        "trials": len(records),
        "status_counts": counts,
        "best": best.number if best is not None else None,
        "top": [_row(r) for r in scored[:TOP]],
        "running": [r.number for r in records if r.status == "running"],
        "curves": {str(r.number): r.curve for r in records if r.curve},
        "statuses": {str(r.number): r.status for r in records},
        "best_so_far": _best_so_far(records, maximise),
        "seconds": round(sum(r.seconds for r in records), 2),
        "png": str(search_dir / REPORT_PNG),
    }


def write_report(search_dir: Path, report: dict[str, Any]) -> None:
    write_json(search_dir / REPORT_JSON, report)
    draw(report, search_dir / REPORT_PNG)


def finish(
    search: Search,
    result: SearchResult,
    parent: Any,
    status: str,
    *,
    tags: dict[str, str],
    artifacts: tuple[str, ...] = (),
) -> None:
    """A search's end (either backend): the report, then its own MLflow run (``parent``,
    a Tracker) gets the best value, ``tags``, its files (search.json, best.toml, the
    report, then ``artifacts``) and ``status``. The best trial is linked before."""
    with contextlib.suppress(Exception):
        result.report = build_report(search)
        write_report(search.folder, result.report)
    best = result.best
    if best is not None and best.metric is not None:
        parent.log_metrics({f"best_{search.metric}": best.metric}, step=best.number)
        parent.set_tags({"heart.best_trial": trial_name(best.number)})
    parent.set_tags({"heart.trials": str(len(result.records)), **tags})
    for name in (STATE, BEST_CONFIG, REPORT_JSON, REPORT_PNG, *artifacts):
        parent.log_artifact(search.folder / name)
    parent.end(status)


COLOURS = {"completed": "tab:blue", "early_stopped": "tab:blue", "pruned": "0.6"}


def draw(report: dict[str, Any], path: Path) -> None:
    """Per-trial curves (the successive-halving picture) and best so far against wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    best = str(report["best"])
    for number, curve in report["curves"].items():
        status = report["statuses"].get(number, "")
        epochs = list(range(1, len(curve) + 1))
        if number == best:
            continue
        left.plot(epochs, curve, color=COLOURS.get(status, "tab:orange"), lw=1, alpha=0.8)
        left.plot(epochs[-1:], curve[-1:], "o", color=COLOURS.get(status, "tab:orange"), ms=3)
    if best in report["curves"]:
        curve = report["curves"][best]
        left.plot(range(1, len(curve) + 1), curve, color="tab:red", lw=2.2, label=f"best #{best}")
        left.legend(loc="lower right", fontsize=8)
    for rung in report["rungs"]:
        left.axvline(rung, color="0.8", ls=":", lw=1)
    left.set_xlabel("epoch (dotted: rungs)" if report["rungs"] else "epoch")
    left.set_ylabel(report["metric"])
    left.set_title(
        f"each trial ({report['pruner']}: grey = pruned, blue = ran its course)", fontsize=9
    )
    points = report["best_so_far"]
    if points:
        right.step([p["minutes"] for p in points], [p["best"] for p in points], where="post", lw=2)
        right.plot(
            [p["minutes"] for p in points],
            [p["value"] for p in points],
            "o",
            color="0.6",
            ms=3,
            label="each trial's best",
        )
        right.legend(loc="lower right", fontsize=8)
    right.set_xlabel("wall time (minutes)")
    right.set_ylabel(f"best {report['metric']} so far")
    right.set_title(f"{report['trials']} trials", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
