"""`heart evaluate MODEL --records`: the EC57 beat-by-beat tables (the scoring is
:mod:`heartcli.evaluate.records`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from heartcli.cli._util import out


def evaluate_records(
    model: Path,
    records: str,
    peaks: str,
    learning_period: float,
    skip_missing: bool,
    include_paced: bool,
    out_csv: Path | None,
    detector: str | None = None,
    *,
    adapt: str | None = None,
    plot: Path | None = None,
) -> None:
    from heartcli.evaluate.records import (
        check_csv_out,
        check_learning_period,
        name_records,
        score_records,
        write_csv,
    )

    check_learning_period(learning_period)
    if out_csv is not None:
        check_csv_out(out_csv, model, records)  # before any record is scored
    o = out()

    def progress(entry: dict[str, Any], i: int, n: int) -> None:
        o.log(
            f"[{i}/{n}] {entry['record']}: QRS Se {_fig(entry['qrs_se'])} +P "
            f"{_fig(entry['qrs_ppv'])}, VEB Se {_fig(entry['veb_se'])}, SVEB Se "
            f"{_fig(entry['sveb_se'])}"
        )

    document = score_records(
        model,
        records,
        peaks=peaks,
        learning_period_s=learning_period,
        include_paced=include_paced,
        skip_missing=skip_missing,
        progress=progress,
        detector=detector,
        adapt=adapt,
        plot=plot,
    )
    document = name_records(document, records)  # namesakes' rows, records given twice
    if out_csv is not None:
        document["out"] = str(write_csv(document, out_csv))
    o.result(document, lambda: _render(document))


def _fig(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


STAT_TITLES = (
    ("qrs_se", "QRS\nSe"),
    ("qrs_ppv", "QRS\n+P"),
    ("veb_se", "VEB\nSe"),
    ("veb_ppv", "VEB\n+P"),
    ("veb_fpr", "VEB\nFPR"),
    ("sveb_se", "SVEB\nSe"),
    ("sveb_ppv", "SVEB\n+P"),
)


def _render(doc: dict[str, Any]) -> None:
    console = out().console
    table = Table(
        title=f"EC57 beat by beat ({_beats_from(doc)}; figures in %, - where undefined)",
        box=box.SIMPLE,
        pad_edge=False,
        padding=(0, 1),
    )
    titles = ("record", "beats", "missed\n(FN)", "false\n(FP)", *(t for _, t in STAT_TITLES))
    for title in titles:
        table.add_column(title, justify="left" if title == "record" else "right", no_wrap=True)
    for entry in doc["records"]:
        table.add_row(*_cells(entry["record"], entry))
    table.add_section()
    table.add_row(*_cells("gross", doc["gross"]))
    table.add_row(*_cells("average", doc["average"], counts=False))
    console.print(table)
    _render_matrix(doc["gross"]["matrix"])
    lines = [
        f"{len(doc['records'])} records; beats scored from {doc['learning_period_s']:g} s "
        f"(learning period) to each record's end, matched within "
        f"{1000 * doc['match_window_s']:g} ms",
        *_protocol_lines(doc),
        "reference classes as heart fetch maps the .atr symbols; VEB +P/FPR: F or Q labelled "
        "V counts neither way; SVEB +P: Q labelled S neither (bxb)",
    ]
    excluded = doc["excluded"]
    if excluded["paced"]:
        lines.append(f"left out, paced (EC57): {', '.join(excluded['paced'])}")
    if excluded["no_atr"]:
        lines.append(f"left out, no .atr (--skip-missing): {', '.join(excluded['no_atr'])}")
    for key, why in (("too_short", "not longer than"), ("no_learning_beats", "no beat in")):
        if excluded.get(key):
            lines.append(
                f"left out, {why} the learning period (--skip-missing): {', '.join(excluded[key])}"
            )
    lines += [f"note: {note}" for note in doc["notes"]]
    seconds = doc["seconds"]
    lines.append(f"time: predict {seconds['predict']:.1f} s, scoring {seconds['score']:.2f} s")
    if doc.get("out"):
        lines.append(f"wrote {doc['out']}")
    for line in lines:
        console.print(line, highlight=False)


def _protocol_lines(doc: dict[str, Any]) -> list[str]:
    """What --adapt did and where --plot wrote, in a line each."""
    lines: list[str] = []
    adapted = [e["adaptation"] for e in doc["records"] if e.get("adaptation")]
    if adapted:
        how = {
            "adapt-signal": "BatchNorm statistics and the rhythm standardisation's centre "
            "re-estimated on it, no labels",
            "adapt-labels": "the head fine-tuned on its .atr labels (patient-specific protocol)",
        }[doc["protocol"]]
        cost = sum(a["seconds"] for a in adapted)
        lines.append(
            f"protocol {doc['protocol']}: each record's model adapted to that record on its "
            f"learning period ({how}); adaptation {cost:.1f} s in all"
        )
    if doc.get("plots"):
        drawn = sum(1 for e in doc["records"] if (e.get("plot") or {}).get("png"))
        lines.append(f"plots: {drawn} PNG(s) of the worst stretches in {doc['plots']}")
    return lines


def _beats_from(doc: dict[str, Any]) -> str:
    if doc["peaks"] == "annotations":
        return "beats of the .atr"
    return f"R-peaks detected by {doc['detector']}"


def _cells(name: str, figures: dict[str, Any], *, counts: bool = True) -> list[str]:
    beats = figures["qrs_tp"] + figures["qrs_fn"]
    head = [name, f"{beats:,}", f"{figures['qrs_fn']:,}", f"{figures['qrs_fp']:,}"]
    if not counts:
        head[1:] = ["", "", ""]
    return head + [_fig(figures[k], 3 if k == "veb_fpr" else 2) for k, _ in STAT_TITLES]


def _render_matrix(matrix: dict[str, dict[str, int]]) -> None:
    from heartcli.evaluate.ec57 import MATRIX_COLUMNS

    table = Table(title="all records: reference (rows) x heart (columns); o: missed, O: false")
    table.add_column("")
    for col in MATRIX_COLUMNS:
        table.add_column(col, justify="right")
    for row, cells in matrix.items():
        table.add_row(row, *[f"{cells[c]:,}" if c in cells else "" for c in MATRIX_COLUMNS])
    out().console.print(table)
