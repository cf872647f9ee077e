"""`heart predict`: classify beats, or every beat of a raw WFDB record, with a run or an .onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from heartcli.cli._util import (
    Adapt,
    Detector,
    adapt_option,
    closing_lines,
    detector_option,
    out,
)


def predict(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="Run folder (heart train), or an exported .onnx or .pte (heart export; its "
            "model_card.json beside it).",
        ),
    ],
    input_: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="Beats (.csv or .parquet, as heart fetch --import reads them) or a WFDB "
            "record path without extension, e.g. ../shared/data/mitdb/100.",
        ),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write one row per beat to a .csv, .parquet or .json file (with --format "
            "wfdb: the folder for the annotation file).",
        ),
    ] = None,
    lead: Annotated[
        str,
        typer.Option(
            "--lead",
            metavar="auto|MLII|channel0|LEAD",
            autocompletion=lambda: ["auto", "MLII", "channel0"],
            help="Record lead: auto (MLII by name, else channel 0; MLII required for a model "
            "trained on MLII data), MLII (required), channel0, or a lead name.",
        ),
    ] = "auto",
    peaks: Annotated[
        Literal["auto", "annotations", "detect"],
        typer.Option(
            "--peaks",
            help="Record beats: auto (the .atr annotations when present, else detected "
            "R-peaks), annotations, or detect (--detector; scored against the .atr if "
            "present).",
        ),
    ] = "auto",
    rows: Annotated[
        int,
        typer.Option(
            "--rows", min=0, metavar="N", help="Beats shown in the table (all go to --out)."
        ),
    ] = 10,
    detector: Annotated[
        Detector,
        detector_option(
            "R-peak detector for detected beats: gqrs (default; its marks moved to the "
            "R-peak) or xqrs (wfdb's XQRS)."
        ),
    ] = None,
    format_: Annotated[
        Literal["auto", "wfdb"],
        typer.Option(
            "--format",
            help="auto: --out's suffix (.csv, .parquet, .json); wfdb: a WFDB annotation file "
            "OUT/<record>.<annotator> (symbols N S V F Q, probability in the aux note).",
        ),
    ] = "auto",
    annotator: Annotated[
        str, typer.Option("--annotator", metavar="NAME", help="WFDB annotator (--format wfdb).")
    ] = "heart",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing annotation file (--format wfdb).")
    ] = False,
    adapt: Annotated[Adapt, adapt_option()] = None,
    learning_period: Annotated[
        float | None,
        typer.Option(
            "--learning-period",
            "-f",
            metavar="SECONDS",
            help="--adapt: the recording's first SECONDS adapt the model and are not "
            "classified (default 300, EC57's learning period).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Predict the class of every beat; with reference labels, per-class sensitivity and PPV."""
    from heartcli.errors import UsageError
    from heartcli.predict import predict as run_predict

    if learning_period is not None and adapt is None:
        raise UsageError("--learning-period sets the learning period of --adapt; add --adapt")
    period = 300.0 if learning_period is None else learning_period
    adapting: dict[str, Any] = {"adapt": adapt, "learning_period_s": period}
    if format_ == "wfdb":
        result, summary = _predict_wfdb(
            model, input_, out_file, lead, peaks, annotator, force, detector, adapting
        )
    else:
        result = run_predict(
            model, input_, lead=lead, peaks=peaks, out=out_file, detector=detector, **adapting
        )
        summary = result.summary()
    if out_file is not None and "out" not in summary:
        summary["out"] = str(out_file)
    o = out()
    o.result(summary, lambda: _render(result, summary, rows))


def _predict_wfdb(
    model: Path,
    input_: Path,
    out_dir: Path | None,
    lead: str,
    peaks: str,
    annotator: str,
    force: bool,
    detector: str | None,
    adapting: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """--format wfdb: the checks first (folder, annotator, an existing file), then predict."""
    from heartcli.errors import UsageError
    from heartcli.predict import check_wfdb_out, write_wfdb
    from heartcli.predict import predict as run_predict
    from heartcli.predict.wfdb import check_annotator

    check_wfdb_out(model, input_, out_dir, annotator, force)  # the output guard, first
    if out_dir is None:
        raise UsageError("--format wfdb writes OUT/<record>.<annotator>: pass --out DIR")
    target = out_dir / f"{input_.name}.{check_annotator(annotator)}"
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to replace it")
    result = run_predict(model, input_, lead=lead, peaks=peaks, detector=detector, **adapting)
    summary = result.summary()
    summary["out"] = str(write_wfdb(result, out_dir, annotator=annotator, force=force))
    return result, summary


def _render(result: Any, summary: dict[str, Any], rows: int) -> None:
    console = out().console
    classes = summary["classes"]
    n = summary["beats"]
    what = {
        "file": "beats from the file",
        "annotations": "beats cut at the record's .atr annotations",
        "detected": "beats cut at detected R-peaks",
    }[summary["segmentation"]]
    lead = f", lead {summary['lead']}" if summary["lead"] else ""
    console.print(f"{summary['input']}: {n:,} {what}{lead}", highlight=False)
    adaptation = summary.get("adaptation")
    if adaptation:
        console.print(_adaptation_line(adaptation), highlight=False)
    if rows:
        table = Table(title=f"first {min(rows, n)} of {n:,} beats")
        data = result.rows()
        cols = [c for c in ("record", "sample", "predicted", "reference") if c in data]
        for c in cols:
            table.add_column(c, justify="right" if c == "sample" else "left")
        for c in classes:
            table.add_column(f"p {c}", justify="right")
        for i in range(min(rows, n)):
            table.add_row(
                *[str(data[c][i]) for c in cols], *[f"{data[f'p_{c}'][i]:.3f}" for c in classes]
            )
        console.print(table)
    counts = Table(title="predicted classes")
    agreement = summary["agreement"]
    counts.add_column("class")
    counts.add_column("predicted", justify="right")
    if agreement:
        for title in ("reference", "sensitivity (Se)", "PPV (+P)"):
            counts.add_column(title, justify="right")
    for c in classes:
        cells = [c, f"{summary['counts'][c]:,}"]
        if agreement:
            a = agreement["per_class"][c]
            known = a["support"] > 0
            cells += [
                f"{a['support']:,}",
                f"{a['sensitivity']:.4f}" if known else "-",
                f"{a['ppv']:.4f}" if a["predicted"] else "-",
            ]
        counts.add_row(*cells)
    console.print(counts)
    if agreement:
        console.print(
            f"agreement with the reference on {agreement['beats']:,} beats: accuracy "
            f"{agreement['accuracy']:.4f}, macro-F1 {agreement['macro_f1']:.4f}",
            highlight=False,
        )
    det = summary.get("detection")
    if det:
        console.print(
            f"R-peaks: {det['found_within_150ms']:,} of {det['reference_beats']:,} reference "
            f"beats found within 150 ms ({det['sensitivity']:.2%}); {det['detected_peaks']:,} "
            f"peaks detected (PPV {det['ppv']:.2%})",
            highlight=False,
        )
    closing_lines(summary["notes"], [summary["out"]] if summary.get("out") else [])


def _adaptation_line(info: dict[str, Any]) -> str:
    """What --adapt did, in one line."""
    line = (
        f"{info['protocol']}: model adapted to this recording on its first "
        f"{info['learning_period_s']:g} s ({info['learning_beats']:,} beats, not classified): "
    )
    if "labelled_beats" in info:
        labels = ", ".join(f"{c} {n:,}" for c, n in info["labels"].items() if n)
        line += f"head fine-tuned on {info['labelled_beats']:,} labelled beats ({labels})"
    else:
        line += f"{info['batchnorm_layers']} BatchNorm layers re-estimated"
        if info.get("rhythm_recentred"):
            line += ", rhythm standardisation re-centred"
    return line + f" in {info['seconds']:.2f} s"
