"""`heart export`: a run as ONNX, torch.export and TorchScript, verified, with a model card;
its int8 scores (red beyond tolerance) and costs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config
from heartcli.errors import HeartError
from heartcli.progress import Progress


class FormatChoice(StrEnum):
    """The values --format offers (help and shell completion list them)."""

    onnx = "onnx"
    pt2 = "pt2"
    torchscript = "torchscript"
    pte = "pte"
    all = "all"


class ExportProgress(Progress):
    """The export's steps, a line each on stderr (hidden by -q; stdout keeps the result)."""

    def start(self, summary: dict[str, Any]) -> None:
        out().log(f"exporting {summary['run']} to {summary['out']}")

    def stage(self, text: str) -> None:
        out().log(text)


def export(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder written by `heart train`.")
    ],
    format_: Annotated[
        list[FormatChoice] | None,
        typer.Option(
            "--format",
            "-f",
            help="Format to write (repeatable); default: [export] formats.",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to write (default: RUN/export).", file_okay=False),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            metavar="dynamic|static",
            help="Also write int8 models, scored on the test part: dynamic (ONNX only: int8 "
            "weights) or static (int8 weights and activations, calibrated on training beats: "
            "ONNX QDQ and, with --format pte, ExecuTorch).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 when an int8 model loses more test macro-F1 than "
            "[export] int8_tolerance (the files are written either way).",
        ),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Real beats for the parity check: a dataset folder or a parquet file "
            "(default: the run's dataset, else the bundled sample).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --out folder if it exists.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Export a run and check every file against PyTorch on real beats before keeping it."""
    from heartcli.export import export_run, parse_formats
    from heartcli.model.runs import read_run_config, read_run_manifest

    o = out()
    read_run_manifest(run)
    if config is not None:
        resolved = resolve_config(config, set_)
    else:
        resolved = read_run_config(run, list(set_ or ()))
    formats = parse_formats(
        [f.value for f in format_] if format_ else None, list(resolved.export.formats)
    )
    result = export_run(
        run,
        formats=formats,
        config=resolved.export,
        out=out_dir,
        quantize=quantize,
        data=data,
        force=force,
        progress=ExportProgress(),
    )
    summary = result.summary()
    failure = result.beyond_tolerance() if strict else None
    if failure is None or not o.json:
        o.result(summary, lambda: _render(summary))
    if failure is not None:  # written and flagged; with --json the error document holds it
        error = HeartError(failure)
        error.result = summary
        raise error


def _render(summary: dict[str, Any]) -> None:
    console = out().console
    parity = summary["parity"]
    table = Table(title=f"exported {summary['run']} to {summary['out']}")
    for title in ("file", "format", "bytes", "max |dp|", "same class", "sha256"):
        table.add_column(title, justify="right" if title in ("bytes", "max |dp|") else "left")
    for f in summary["files"]:
        check = f.get("parity") or f.get("agreement") or {}
        table.add_row(
            f["file"],
            f["format"],
            f"{f['bytes']:,}",
            f"{check.get('max_abs_diff', 0):.1e}",
            f"{check.get('argmax_agreement', 0):.2%}",
            f["sha256"][:16],
        )
    console.print(table)
    console.print(
        f"parity: {', '.join(parity['passed'])} within {parity['atol']:g} and the same class on "
        f"{parity['beats']:,} real beats ({parity['source']})",
        highlight=False,
    )
    for q in summary.get("int8") or []:
        console.print(_int8_line(q), highlight=False)
    _render_costs(console, summary)
    if summary["evaluation"] != "evaluated":
        console.print(f"model card: evaluation {summary['evaluation']}", highlight=False)
    for note in summary["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"model card: {summary['out']}/model_card.json and MODEL_CARD.md", highlight=False
    )


def _int8_line(q: dict[str, Any]) -> str:
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


def _render_costs(console: Console, summary: dict[str, Any]) -> None:
    """The model's costs and the latency table of an export."""
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
