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
from heartcli.search.best import BEST_CONFIG
from heartcli.search.events import SearchResult
from heartcli.search.pruners import rungs
from heartcli.search.records import REFERENCE, TrialRecord, best_of, trial_name
from heartcli.search.spec import Search
from heartcli.search.state import STATE, read_state, records_of

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


def _rung_table(records: list[TrialRecord], milestones: list[int], maximise: bool) -> list[Any]:
    """Per rung: the trials that reached it, how many went on, its best value and the
    lowest value that went on (successive halving's choice at that rung)."""
    table = []
    for epoch in milestones:
        at = [(r, r.rungs[str(epoch)]) for r in records if str(epoch) in r.rungs]
        if not at:
            continue
        on = [v for r, v in at if r.epochs_run > epoch or r.status in REFERENCE]
        pick = max if maximise else min
        table.append(
            {
                "epoch": epoch,
                "reached": len(at),
                "went_on": len(on),
                "best": pick(v for _, v in at),
                "lowest_on": (min if maximise else max)(on) if on else None,
            }
        )
    return table


def _refit_rows(book: dict[str, Any]) -> list[dict[str, Any]]:
    """The refit table: each refitted trial's validation value, out-of-fold figures, time."""
    rows = []
    for number in book.get("order") or []:
        entry = (book.get("trials") or {}).get(str(number)) or {}
        oof = entry.get("oof") or {}
        done = sum((f or {}).get("status") == "completed" for f in entry.get("folds", {}).values())
        rows.append(
            {
                "number": number,
                "val": entry.get("metric"),
                "rung": entry.get("rung", 0),
                "refit": entry.get("refit"),
                "folds_done": done,
                "oof_macro_f1": oof.get("macro_f1"),
                "oof_macro_f1_ci95": oof.get("macro_f1_ci95"),
                "oof_f1": oof.get("f1"),
                "seconds": entry.get("seconds"),
                "reason": entry.get("reason", ""),
            }
        )
    return sorted(rows, key=lambda r: (r["oof_macro_f1"] is None, -(r["oof_macro_f1"] or 0.0)))


def _best_oof_so_far(book: dict[str, Any], origin: float | None) -> list[dict[str, Any]]:
    """(minutes, best out-of-fold macro-F1 so far, what) as each refitted trial ended,
    then the recommended model's (cross-fitted) figure."""
    if origin is None:
        return []
    ends = [
        (float(e["ended_at"]), float(e["oof"]["macro_f1"]), f"trial {n}")
        for n, e in (book.get("trials") or {}).items()
        if e.get("refit") == "completed" and e.get("ended_at")
    ]
    final = book.get("final")
    if final:
        ends.append((float(final["ended_at"]), float(final["macro_f1"]), "final"))
    points, best = [], -1.0
    for at, value, what in sorted(ends):
        best = max(best, value)
        points.append(
            {"minutes": round((at - origin) / 60, 3), "best": best, "value": value, "what": what}
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
    milestones = rungs(s.min_epochs, s.reduction_factor, most) if s.pruner == "asha" else []
    book = state.get("refit") or {}
    starts = [r.started_at for r in records if r.started_at is not None]
    return {
        "search_dir": str(search_dir),
        "metric": s.metric,
        "pruner": s.pruner,
        "rungs": milestones,
        "rung_table": _rung_table(records, milestones, maximise),
        "evals": state.get("evals"),
        "trials": len(records),
        "status_counts": counts,
        "best": best.number if best is not None else None,
        "top": [_row(r) for r in scored[:TOP]],
        "running": [r.number for r in records if r.status == "running"],
        "curves": {str(r.number): r.curve for r in records if r.curve},
        "statuses": {str(r.number): r.status for r in records},
        "best_so_far": _best_so_far(records, maximise),
        "refit": {
            "trials": s.refit,
            "folds": s.folds,
            "rows": _refit_rows(book),
            "final": book.get("final"),
            "best_oof_so_far": _best_oof_so_far(book, min(starts) if starts else None),
        }
        if s.refit
        else None,
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

    refit = report.get("refit")
    fig, axes = plt.subplots(1, 3 if refit else 2, figsize=(18 if refit else 12, 4))
    left, right = axes[0], axes[1]
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
    if refit:
        _draw_oof(axes[2], refit)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _draw_oof(ax: Any, refit: dict[str, Any]) -> None:
    """The best out-of-fold macro-F1 so far against wall time: each refitted trial as it
    ended, then the recommended model."""
    points = refit["best_oof_so_far"]
    if points:
        minutes = [p["minutes"] for p in points]
        ax.step(minutes, [p["best"] for p in points], where="post", lw=2, color="tab:green")
        ax.plot(minutes, [p["value"] for p in points], "o", color="0.6", ms=3,
                label="each refitted trial")  # fmt: skip
        finals = [p for p in points if p["what"] == "final"]
        for p in finals:
            ax.plot([p["minutes"]], [p["value"]], "*", color="tab:red", ms=10,
                    label="recommended (cross-fitted)")  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("best out-of-fold macro-F1 so far")
    ax.set_title(f"refit: top {refit['trials']} trials on {refit['folds']} folds", fontsize=9)
