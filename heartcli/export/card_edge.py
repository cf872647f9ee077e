"""The device sections of MODEL_CARD.md: the int8 scores and the costs of every file."""

from __future__ import annotations

from typing import Any


def int8_markdown(card: dict[str, Any]) -> list[str]:
    """Each int8 file against the float model on the test part; a loss beyond tolerance
    is flagged in bold (and red where the renderer shows colour)."""
    scores = card.get("int8") or []
    if not scores:
        return []
    files = {f["file"]: f for f in card["files"]}
    lines = [
        "",
        "## Int8",
        "",
        "Not held to the parity tolerance: each int8 file is scored on the test part against "
        "the float model, and may lose at most `export.int8_tolerance` of macro-F1.",
        "",
        "| file | method | calibration | macro-F1 int8 | macro-F1 float | loss | same class "
        "| within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in scores:
        entry = files.get(q["file"], {})
        cal = entry.get("calibration") or {}
        calibration = (
            f"{cal['beats']:,} training beats ({cal['per_class']})" if cal else "none (dynamic)"
        )
        verdict = (
            "yes"
            if q["within_tolerance"]
            else '<span style="color:red">**NO: beyond tolerance**</span>'
        )
        lines.append(
            f"| {q['file']} | {entry.get('exporter', '')} | {calibration} | "
            f"{q['macro_f1_int8']:.4f} | {q['macro_f1_float']:.4f} | {q['macro_f1_loss']:+.4f} | "
            f"{q['agreement']:.2%} | {verdict} (tolerance {q['tolerance']:g}) |"
        )
    beyond = [q["file"] for q in scores if not q["within_tolerance"]]
    if beyond:
        lines += [
            "",
            f'<span style="color:red">**Warning**: {", ".join(beyond)} lose more test macro-F1 '
            "than the tolerance; prefer the float file.</span>",
        ]
    return lines


def costs_markdown(card: dict[str, Any]) -> list[str]:
    """Parameters, multiply-adds, peak activation estimate; size and latency per file."""
    costs = card.get("costs")
    if not costs:
        return []
    lines = [
        "",
        "## Costs",
        "",
        f"- parameters: {costs['parameters']:,}",
        f"- multiply-adds per beat: {costs['macs_per_beat']:,} ({costs['macs_method']})",
        f"- peak activation memory: ~{costs['peak_activation_bytes_float32']:,} bytes in "
        f"float32, ~{costs['peak_activation_bytes_int8']:,} in int8 "
        f"({costs['peak_activation_method']})",
        "",
        "| file | bytes | runtime | threads | us per beat, batch 1 | us per beat, batch 256 |",
        "|---|---|---|---|---|---|",
    ]
    method = ""
    for f in card["files"]:
        lat = f.get("latency") or {}
        method = lat.get("method", method)
        lines.append(
            f"| {f['file']} | {f['bytes']:,} | {lat.get('runtime', '-')} | "
            f"{lat.get('threads', '-')} | {lat.get('batch_1_us_per_beat', '-')} | "
            f"{lat.get('batch_256_us_per_beat', '-')} |"
        )
    if method:
        lines += ["", f"Latency: {method}."]
    return lines
