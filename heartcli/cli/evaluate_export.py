"""`heart evaluate FILE.onnx|FILE.pte`: render an exported model's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from heartcli.cli._util import out


def evaluate_file(path: Path, data: Path | None, split: str | None) -> None:
    from heartcli.evaluate.exported import evaluate_export

    result = evaluate_export(path, data, split)
    out().result(result, lambda: _render(result))


def _render(result: dict[str, Any]) -> None:
    from heartcli.cli.evaluate import _render_aami

    console = out().console
    lo, hi = result["macro_f1_ci95"]
    console.print(
        f"{result['model']} ({result['model_kind']}) on {result['data']}, {result['n']:,} beats",
        highlight=False,
    )
    console.print(
        f"accuracy {result['accuracy']:.4f}   balanced accuracy {result['balanced_accuracy']:.4f}"
        f"   macro-F1 {result['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f})",
        highlight=False,
    )
    table = Table(title="per class")
    for title in ("class", "precision", "recall", "F1", "support"):
        table.add_column(title, justify="left" if title == "class" else "right")
    for name in result["classes"]:
        c = result["per_class"][name]
        table.add_row(
            name,
            f"{c['precision']:.4f}",
            f"{c['recall']:.4f}",
            f"{c['f1']:.4f}",
            f"{c['support']:,}",
        )
    console.print(table)
    if result.get("aami"):
        _render_aami(result["aami"], per_record=False)
