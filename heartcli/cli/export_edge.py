"""The device side of `heart export`'s output: int8 scores (red beyond tolerance), costs."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def int8_line(q: dict[str, Any]) -> str:
    """One int8 file's score, in rich markup (red when beyond tolerance)."""
    text = (
        f"int8 {q['file']}: macro-F1 {q['macro_f1_int8']:.4f} vs float "
        f"{q['macro_f1_float']:.4f} on {q['test_beats']:,} test beats (loss "
        f"{q['macro_f1_loss']:+.4f}, tolerance {q['tolerance']:g}); same class as float for "
        f"{q['agreement']:.2%}"
    )
    if q["within_tolerance"]:
        return text
    return f"[bold red]{text}: BEYOND TOLERANCE[/]"


def render_edge(console: Console, summary: dict[str, Any]) -> None:
    """The int8 scores and the costs table of an export."""
    for q in summary.get("int8") or []:
        console.print(int8_line(q), highlight=False)
    costs = summary.get("costs")
    if not costs:
        return
    console.print(
        f"costs: {costs['parameters']:,} parameters, {costs['macs_per_beat']:,} multiply-adds "
        f"per beat, peak activations ~{costs['peak_activation_bytes_float32']:,} bytes in "
        f"float32 / ~{costs['peak_activation_bytes_int8']:,} in int8 (estimate)",
        highlight=False,
    )
    table = Table(title="latency per beat (median of repeats)")
    for title in ("file", "runtime", "threads", "batch 1 (us)", "batch 256 (us)"):
        table.add_column(title, justify="left" if title in ("file", "runtime") else "right")
    for f in summary["files"]:
        lat = f.get("latency")
        if lat:
            table.add_row(
                f["file"],
                lat["runtime"],
                str(lat["threads"]),
                f"{lat['batch_1_us_per_beat']:.1f}",
                f"{lat['batch_256_us_per_beat']:.1f}",
            )
    console.print(table)


def strict_failure(summary: dict[str, Any]) -> bool:
    """With --strict: a red error line on stderr when an int8 file is beyond tolerance."""
    beyond = [q for q in summary.get("int8") or [] if not q["within_tolerance"]]
    if not beyond:
        return False
    err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    for q in beyond:
        err.print(
            f"[bold red]error:[/] {q['file']} loses {q['macro_f1_loss']:.4f} test macro-F1 "
            f"(> export.int8_tolerance {q['tolerance']:g}); it was written and the card says "
            "so; --strict fails the export",
            highlight=False,
        )
    return True
