"""`heart evaluate`: honest figures of a trained run on held-out data (the test part by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from heartcli.cli._util import (
    Adapt,
    Detector,
    adapt_option,
    closing_lines,
    detector_option,
    out,
)
from heartcli.errors import UsageError
from heartcli.progress import Progress


def evaluate(
    run: Annotated[
        Path,
        typer.Argument(
            metavar="RUN",
            help="Run folder written by `heart train`, or an exported .onnx or .pte "
            "(`heart export`; its model_card.json beside it).",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset folder (its --split test part is used) or one parquet file of beats; "
            "default: the run's own [data] dir.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="Split of the dataset folder (default: the run's [data] split)."
        ),
    ] = None,
    records: Annotated[
        str | None,
        typer.Option(
            "--records",
            metavar="DIR|a,b,c",
            help="Score whole WFDB records beat by beat against their .atr (ANSI/AAMI EC57, "
            "as WFDB's bxb): a folder of records or comma-separated record paths.",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = None,
    peaks: Annotated[
        Literal["detect", "annotations"],
        typer.Option(
            "--peaks",
            help="--records beats: detect (R-peaks found in the signal) or annotations (the "
            ".atr's own beats: scores the classifier alone).",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = "detect",
    detector: Annotated[
        Detector,
        detector_option(
            "--records --peaks detect: the R-peak detector (default gqrs), as heart predict's.",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = None,
    learning_period: Annotated[
        float,
        typer.Option(
            "--learning-period",
            "-f",
            metavar="SECONDS",
            min=0,
            help="--records: beats before this time are not scored (EC57: 300 s; bxb -f).",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = 300.0,
    skip_missing: Annotated[
        bool,
        typer.Option(
            "--skip-missing",
            help="--records: leave out records without .atr instead of refusing them.",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = False,
    include_paced: Annotated[
        bool,
        typer.Option(
            "--include-paced",
            help="--records: also score the paced records 102, 104, 107, 217 (EC57 leaves "
            "them out).",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = False,
    out_csv: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE.csv",
            help="--records: one line per record in bxb's -L column order, then Gross and Average.",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = None,
    adapt: Annotated[Adapt, adapt_option(rich_help_panel="Whole records (EC57)")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="DIR",
            help="--records: per record, DIR/<record>.png: the stretches with the most "
            "disagreements, the signal with the reference and the predicted classes.",
            rich_help_panel="Whole records (EC57)",
        ),
    ] = None,
) -> None:
    """Accuracy, balanced accuracy, macro-F1 with 95% CI, per-class figures, confusion matrix.

    With --records: whole recordings scored beat by beat (EC57: QRS, VEB and SVEB Se/+P).
    """
    if records is not None or out_csv is not None or adapt is not None or plot is not None:
        if data is not None or split is not None or records is None:
            raise UsageError(
                "--records scores whole records and takes no --data/--split; --out, --adapt "
                "and --plot need --records"
            )
        evaluate_records(
            run, records, peaks, learning_period, skip_missing, include_paced, out_csv, detector,
            adapt=adapt, plot=plot,
        )  # fmt: skip
        return
    from heartcli.evaluate import evaluate as run_evaluation

    evaluation = run_evaluation(run, data, split)
    o = out()
    if evaluation.result.get("warning"):
        o.warn(f"warning: {evaluation.result['warning']}")
    if evaluation.tracking is not None:
        o.log(evaluation.tracking)
    o.result(evaluation.result, lambda: _render(evaluation.result, evaluation.written))


def _render(result: dict[str, Any], written: list[Path]) -> None:
    """The figures of a run (``written``: its eval.json and confusion.png) or of an exported
    file (nothing written: no confusion matrix, plain column titles)."""
    from heartcli.data.dataset import AAMI_CLASSES

    console = out().console
    lo, hi = result["macro_f1_ci95"]
    if not written:
        console.print(
            f"{result['model']} ({result['model_kind']}) on {result['data']}, "
            f"{result['n']:,} beats",
            highlight=False,
        )
    else:
        console.print(f"figures from: {result['data']}, {result['n']:,} beats", highlight=False)
        if result.get("split") == "random":
            console.print(RANDOM_NOTE, highlight=False)
    console.print(
        f"accuracy {result['accuracy']:.4f}   balanced accuracy {result['balanced_accuracy']:.4f}"
        f"   macro-F1 {result['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f})",
        highlight=False,
    )
    aami = result["classes"] == AAMI_CLASSES
    console.print(_class_table(result, aami=aami and bool(written)))
    if written:
        _render_confusion(result)
        if aami:
            console.print(
                "Se = sensitivity, +P = positive predictive value (AAMI EC57)", highlight=False
            )
    if result.get("aami"):
        per_record = bool(written) and result.get("split") == "inter-patient"
        _render_aami(result["aami"], per_record=per_record)
    closing_lines(wrote=written)


RANDOM_NOTE = (
    "note: random is a beat-level split (the Kaggle protocol): the same patients are in "
    "train and test; the inter-patient split measures generalisation to new patients"
)


def _class_table(result: dict[str, Any], *, aami: bool) -> Table:
    """Precision, recall, F1 and support per class (``aami``: titled +P and Se)."""
    table = Table(title="per class")
    table.add_column("class")
    for title in (
        "precision (+P)" if aami else "precision",
        "recall (Se)" if aami else "recall",
        "F1",
        "support",
    ):
        table.add_column(title, justify="right")
    for name in result["classes"]:
        c = result["per_class"][name]
        table.add_row(
            name,
            f"{c['precision']:.4f}",
            f"{c['recall']:.4f}",
            f"{c['f1']:.4f}",
            f"{c['support']:,}",
        )
    return table


def _render_confusion(result: dict[str, Any]) -> None:
    console = out().console
    console.print("confusion matrix (rows: true, columns: predicted)", highlight=False)
    matrix = Table()
    matrix.add_column("")
    for name in result["classes"]:
        matrix.add_column(name, justify="right")
    for name, row in zip(result["classes"], result["confusion_matrix"], strict=True):
        matrix.add_row(name, *[f"{v:,}" for v in row])
    console.print(matrix)


def _render_aami(figures: dict[str, Any], *, per_record: bool) -> None:
    """The EC57 table, the SVEB / VEB rows and jκ; per record for the inter-patient split."""
    console = out().console
    table = Table(title=f"AAMI EC57 ({figures['scored_beats']:,} scored beats)")
    table.add_column("class")
    for title in ("Se", "+P", "FPR", "F1", "support"):
        table.add_column(title, justify="right")
    from heartcli.metrics.aami import ROWS

    rows = {name: row for row, name in ROWS.items()}
    for name, c in figures["per_class"].items():
        label = f"{rows[name]} ({name})" if name in rows else name
        table.add_row(
            label,
            f"{c['se']:.4f}",
            f"{c['ppv']:.4f}",
            f"{c['fpr']:.4f}",
            f"{c['f1']:.4f}",
            f"{c['support']:,}",
        )
    console.print(table)
    for row, c in figures["rows"].items():
        console.print(
            f"{row}: Se {c['se']:.4f}  +P {c['ppv']:.4f}  FPR {c['fpr']:.4f}  F1 {c['f1']:.4f}",
            highlight=False,
        )
    console.print(
        f"jκ {figures['jk_index']:.4f} = κ/2 + j/8 (κ {figures['kappa']:.4f}, "
        f"j {figures['j_index']:.4f}); accuracy {figures['accuracy']:.4f}",
        highlight=False,
    )
    console.print(figures["note"], highlight=False)
    if per_record and figures.get("per_record"):
        _render_records(figures["per_record"])


def _render_records(records: dict[str, Any]) -> None:
    def fig(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    table = Table(
        title="per record (Se, +P: - where undefined; share: of all S or V beats)",
        box=box.SIMPLE,
        pad_edge=False,
    )
    for title in ("record", "beats", "acc", "S", "Se", "+P", "share", "V", "Se", "+P", "share"):
        table.add_column(title, justify="left" if title == "record" else "right")
    for record, r in records.items():
        s, v = r["S"], r["V"]
        table.add_row(
            record,
            f"{r['beats']:,}",
            fig(r["accuracy"]),
            f"{s['support']:,}",
            fig(s["se"]),
            fig(s["ppv"]),
            share(s["share"]),
            f"{v['support']:,}",
            fig(v["se"]),
            fig(v["ppv"]),
            share(v["share"]),
        )
    out().console.print(table)


# ------------------------------------------------- --records: whole records (EC57)
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
    with RecordsProgress() as progress:
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
    out().result(document, lambda: _render_records_table(document))


class RecordsProgress(Progress):
    """--records: a bar of the records scored on stderr (on a terminal) and a line per record
    (QRS, VEB and SVEB sensitivity so far as it goes)."""

    def __init__(self) -> None:
        self.o = out()
        self.bar = RichBar(
            TextColumn("scoring records"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.o.err,
            transient=True,
            disable=self.o.quiet or not self.o.err.is_terminal,
        )
        self.bar_task: Any = None
        self.scored = 0
        self.total = 0

    def __enter__(self) -> RecordsProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def task(self, name: str, total: int | None = None) -> None:
        self.total = total or 0
        self.bar_task = self.bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        self.scored += n
        self.bar.advance(self.bar_task, n)

    def done(self, name: str, result: Any = None) -> None:
        self.o.log(
            f"[{self.scored + 1}/{self.total}] {name}: QRS Se {_fig(result['qrs_se'])} +P "
            f"{_fig(result['qrs_ppv'])}, VEB Se {_fig(result['veb_se'])}, SVEB Se "
            f"{_fig(result['sveb_se'])}"
        )


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


def _render_records_table(doc: dict[str, Any]) -> None:
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
    _render_ec57_matrix(doc["gross"]["matrix"])
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
    for line in lines:  # not wrapped: a path stays one piece to copy
        console.print(line, highlight=False, soft_wrap=True)


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


def _render_ec57_matrix(matrix: dict[str, dict[str, int]]) -> None:
    from heartcli.evaluate.ec57 import MATRIX_COLUMNS

    table = Table(title="all records: reference (rows) x heart (columns); o: missed, O: false")
    table.add_column("")
    for col in MATRIX_COLUMNS:
        table.add_column(col, justify="right")
    for row, cells in matrix.items():
        table.add_row(row, *[f"{cells[c]:,}" if c in cells else "" for c in MATRIX_COLUMNS])
    out().console.print(table)
