"""`heart evaluate`: honest figures of a trained run on held-out data (the test part by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich import box
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
        from heartcli.cli.ec57_cmd import evaluate_records

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
