"""`heart evaluate`: honest figures of a trained run on held-out data (the test part by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heartcli.cli._util import out
from heartcli.dataset import AAMI_CLASSES


def evaluate(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder written by `heart train`.")
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
) -> None:
    """Accuracy, balanced accuracy, macro-F1 with 95% CI, per-class figures, confusion matrix."""
    from heartcli.dataset import load_split, read_beats
    from heartcli.evaluate import evaluate_run
    from heartcli.runs import CONFUSION, EVAL, load_run

    loaded = load_run(run)
    source = data if data is not None else Path(loaded.config.data.dir)
    split_name = split or loaded.config.data.split
    if source.is_file():
        beats = read_beats(source)
        description, split_used = str(source), None
    else:
        beats = load_split(source, split_name, "test")
        description, split_used = f"{source} (split {split_name}, test part)", split_name
    result = evaluate_run(loaded, beats, description=description, split=split_used)
    from heartcli.tracking import log_evaluation

    o = out()
    if result.get("warning"):
        o.warn(f"warning: {result['warning']}")
    o.log(log_evaluation(loaded.manifest, result, [loaded.path / EVAL, loaded.path / CONFUSION]))
    o.result(result, lambda: _render(result, loaded.path / EVAL, loaded.path / CONFUSION))


def _render(result: dict[str, Any], eval_path: Path, png: Path) -> None:
    console = out().console
    classes = result["classes"]
    aami = classes == AAMI_CLASSES
    lo, hi = result["macro_f1_ci95"]
    console.print(f"figures from: {result['data']}, {result['n']:,} beats", highlight=False)
    if result.get("split") == "random":
        console.print(
            "note: random is a beat-level split (the Kaggle protocol): the same patients are in "
            "train and test; the inter-patient split measures generalisation to new patients",
            highlight=False,
        )
    console.print(
        f"accuracy {result['accuracy']:.4f}   balanced accuracy {result['balanced_accuracy']:.4f}"
        f"   macro-F1 {result['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f})",
        highlight=False,
    )
    table = Table(title="per class")
    table.add_column("class")
    for title in (
        "precision (+P)" if aami else "precision",
        "recall (Se)" if aami else "recall",
        "F1",
        "support",
    ):
        table.add_column(title, justify="right")
    for name in classes:
        c = result["per_class"][name]
        table.add_row(
            name,
            f"{c['precision']:.4f}",
            f"{c['recall']:.4f}",
            f"{c['f1']:.4f}",
            f"{c['support']:,}",
        )
    console.print(table)
    console.print("confusion matrix (rows: true, columns: predicted)", highlight=False)
    matrix = Table()
    matrix.add_column("")
    for name in classes:
        matrix.add_column(name, justify="right")
    for name, row in zip(classes, result["confusion_matrix"], strict=True):
        matrix.add_row(name, *[f"{v:,}" for v in row])
    console.print(matrix)
    if aami:
        console.print(
            "Se = sensitivity, +P = positive predictive value (AAMI EC57)", highlight=False
        )
    console.print(f"wrote {eval_path} and {png}", highlight=False)
