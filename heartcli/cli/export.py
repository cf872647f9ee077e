"""`heart export`: a run as ONNX, torch.export and TorchScript, verified, with a model card."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config


class FormatChoice(StrEnum):
    """The values --format offers (help and shell completion list them)."""

    onnx = "onnx"
    pt2 = "pt2"
    torchscript = "torchscript"
    pte = "pte"
    all = "all"


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
        log=o.log,
    )
    o.result(result.summary(), lambda: _render(result.summary()))
    if strict:
        from heartcli.cli.export_edge import strict_failure

        if strict_failure(result.summary()):
            raise typer.Exit(1)


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
    q = summary.get("quantized")
    if q and not summary.get("int8"):
        console.print(
            f"int8: macro-F1 {q['macro_f1_int8']:.4f} vs float {q['macro_f1_float']:.4f} on "
            f"{q['test_beats']:,} test beats; same class as float for {q['agreement']:.2%}",
            highlight=False,
        )
    from heartcli.cli.export_edge import render_edge

    render_edge(console, summary)
    if summary["evaluation"] != "evaluated":
        console.print(f"model card: evaluation {summary['evaluation']}", highlight=False)
    for note in summary["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"model card: {summary['out']}/model_card.json and MODEL_CARD.md", highlight=False
    )
