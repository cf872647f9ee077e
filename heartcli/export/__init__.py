"""`heart export`: a trained run as ONNX, a torch.export program and TorchScript, verified.

Every exported file maps beats float32 ``[batch, 187]`` (any batch size) to softmax
probabilities ``[batch, n_classes]``. Before anything is reported done, each file is
reloaded in its own runtime (ONNX Runtime, ``torch.export.load``, ``torch.jit.load``) and
run on real beats of the run's dataset (the test part, topped up from the training part
when it holds fewer than ``[export] parity_beats``): the largest absolute difference of the
probabilities against the PyTorch model must be at most ``[export] atol`` and the
predicted class must be the same for every beat. Everything is written into a hidden
temporary folder beside ``--out`` that is renamed into place only after all checks pass,
so a failed export leaves nothing behind.

ONNX goes through the torch.export-based exporter (``dynamo=True``, the maintained path,
onnxscript) at ``[export] opset``; if that exporter fails, the TorchScript-based one is used
and the card says so. ``--quantize`` (``dynamic``) adds a dynamic int8 copy (ONNX Runtime's
``quantize_dynamic``), which is not held to ``atol``: its agreement with the float model
and both test macro-F1 are in the card. ``--format pte`` adds an ExecuTorch program
(:mod:`heartcli.export.pte`, the extra ``heart[edge]``); ``--quantize static`` adds static
int8 ONNX and ExecuTorch files calibrated on training beats, each held to ``[export]
int8_tolerance`` of test macro-F1 (:mod:`heartcli.export.quantize`; a bigger loss is
flagged, not refused). Every card carries the costs (:mod:`heartcli.export.costs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import ExportConfig
from heartcli.data.dataset import BeatSet
from heartcli.errors import HeartError, UsageError
from heartcli.export.card import build_card, card_markdown
from heartcli.export.edge import (
    check_request,
    measure_costs,
    quantize_mode,
    score_int8_files,
    write_int8,
)
from heartcli.export.formats import (
    EDGE_FORMATS,
    FILENAMES,
    FORMATS,
    check_opset,
    export_onnx,
    export_pt2,
    export_torchscript,
    probability_module,
)
from heartcli.export.guard import CARD_JSON, CARD_MD, SUMS, check_replaceable
from heartcli.export.parity import (
    ParityError,
    check_parity,
    compare,
    exported_runner,
    onnx_runner,
    parity_beats,
    reload_runner,
    run_batches,
    test_inputs,
)
from heartcli.io import place_dir, sha256_file, staged_dir, write_json, write_text

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun

__all__ = ["ExportResult", "ParityError", "export_run", "parse_formats"]


@dataclass
class ExportResult:
    run: Path
    out: Path
    files: list[dict[str, Any]]
    card: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "run": str(self.run),
            "out": str(self.out),
            "files": self.files,
            "parity": self.card["parity"],
            "quantized": self.card.get("quantized"),
            "int8": self.card.get("int8"),
            "int8_within_tolerance": all(
                q["within_tolerance"] for q in self.card.get("int8") or []
            ),
            "costs": self.card.get("costs"),
            "evaluation": self.card["evaluation"].get("status"),
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def parse_formats(values: list[str] | None, default: list[str]) -> list[str]:
    """``--format`` values (repeatable, ``all``) -> formats in canonical order."""
    wanted = set(values or default)
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(FORMATS)
    unknown = sorted(wanted - set(FORMATS) - set(EDGE_FORMATS))
    if unknown:
        raise UsageError(f"--format {unknown[0]}: use onnx, pt2, torchscript, pte or all")
    return [f for f in (*FORMATS, *EDGE_FORMATS) if f in wanted]


def _quantized_report(
    tmp: Path,
    inputs: list[np.ndarray],
    reference: np.ndarray,
    test: BeatSet,
    run: LoadedRun,
    source: str,
) -> dict[str, Any]:
    from heartcli.metrics import confusion_matrix as cm
    from heartcli.metrics import macro_f1_from_confusion

    int8 = onnx_runner(tmp / FILENAMES["onnx-int8"])
    flt = onnx_runner(tmp / FILENAMES["onnx"])
    agreement = compare(reference, run_batches(int8, inputs))
    xt = test_inputs(run, test, source)
    pred_f = run_batches(flt, xt).argmax(axis=1)
    pred_q = run_batches(int8, xt).argmax(axis=1)
    k = len(run.classes)
    return {
        "file": FILENAMES["onnx-int8"],
        "method": "onnxruntime.quantization.quantize_dynamic, QInt8 weights",
        "test_beats": len(test),
        "test_source": source,
        "macro_f1_float": macro_f1_from_confusion(cm(test.y, pred_f, k)),
        "macro_f1_int8": macro_f1_from_confusion(cm(test.y, pred_q, k)),
        "agreement": agreement["argmax_agreement"],
        "agreement_on_parity_beats": agreement,
    }


def _export_pte(module: Any, example: tuple[Any, ...], path: Path) -> dict[str, Any]:
    from heartcli.export.pte import export_pte

    return export_pte(module, example, path)


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Move the verified folder onto ``out`` (replacing it only with ``force``)."""
    check_replaceable(out, force)  # again: something may have been put there meanwhile
    place_dir(tmp, out)


@dataclass
class _Export:
    """What the steps of one export share: the request, the module, the parity beats."""

    run: LoadedRun
    out_dir: Path
    config: ExportConfig
    formats: list[str]
    mode: str | None
    data: Path | None
    say: Callable[[str], None]
    module: Any
    example: tuple[Any, ...]  # two beats (and their rhythm) to trace the module with
    reference: np.ndarray  # PyTorch's probabilities on the parity beats
    # what parity_beats returns: the parity beats as inputs and their source, the test part
    inputs: list[np.ndarray]
    source: str
    test: BeatSet
    test_source: str
    notes: list[str] = field(default_factory=list)


def _prepare(
    run_path: str | Path,
    out: str | Path | None,
    formats: list[str],
    config: ExportConfig,
    quantize: bool | str | None,
    data: Path | None,
    force: bool,
    say: Callable[[str], None],
) -> _Export:
    """Load the run, check the request and ``--out``, and run PyTorch on the parity beats."""
    import torch

    from heartcli.model.load import load_run

    run = load_run(run_path)
    out_dir = Path(out) if out is not None else Path(run.path) / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: a file is in the way; choose a folder")
    check_replaceable(out_dir, force)
    mode = quantize_mode(quantize)
    check_request(formats, mode)
    if "onnx" in formats:
        check_opset(config.opset)
    beats = parity_beats(run, config.parity_beats, data)
    module = probability_module(run.model)
    inputs = beats[0]
    example = tuple(torch.from_numpy(a[:2].copy()) for a in inputs)
    reference = run_batches(exported_runner(module), inputs)
    job = _Export(
        run, out_dir, config, formats, mode, data, say, module, example, reference, *beats
    )
    if len(inputs[0]) < config.parity_beats:
        job.notes.append(
            f"only {len(inputs[0]):,} real beats were available for the parity check "
            f"(export.parity_beats = {config.parity_beats:,})"
        )
    return job


def _write_files(job: _Export, tmp: Path) -> dict[str, dict[str, Any]]:
    """Every requested file, and the int8 ones of ``--quantize``, into ``tmp``."""
    module, example = job.module, job.example
    exporters = {
        "onnx": lambda p: export_onnx(module, example, p, job.config.opset),
        "pt2": lambda p: export_pt2(module, example, p),
        "torchscript": lambda p: export_torchscript(module, example, p),
        "pte": lambda p: _export_pte(module, example, p),
    }
    info: dict[str, dict[str, Any]] = {}
    for fmt in job.formats:
        job.say(f"exporting {FILENAMES[fmt]}")
        try:
            info[fmt] = exporters[fmt](tmp / FILENAMES[fmt])
        except HeartError:
            raise
        except Exception as exc:
            raise HeartError(
                f"{fmt} export failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None
        if info[fmt].get("note"):
            job.notes.append(info[fmt]["note"])
    if job.mode:
        written, _calibration = write_int8(
            tmp, job.formats, job.mode, module, example, job.run, job.config, job.data, job.say
        )
        info.update(written)
    return info


def _check_files(
    job: _Export, tmp: Path, info: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """Each file reloaded in its runtime: the float ones held to ``atol``, the int8 ones
    scored on the test part. Returns the files' entries, the card's ``quantized`` and
    ``int8``."""
    files: list[dict[str, Any]] = []
    for fmt in job.formats:
        job.say(f"checking {FILENAMES[fmt]} on {len(job.inputs[0]):,} real beats")
        parity = check_parity(fmt, tmp / FILENAMES[fmt], job.inputs, job.reference, job.config.atol)
        files.append({"file": FILENAMES[fmt], "format": fmt, **info[fmt], "parity": parity})
    quantized = None
    if job.mode == "dynamic":
        job.say("scoring the int8 model")
        quantized = _quantized_report(
            tmp, job.inputs, job.reference, job.test, job.run, job.test_source
        )
    int8: list[dict[str, Any]] = []
    int8_formats: list[str] = [f for f in ("onnx-int8", "pte-int8") if f in info]
    if int8_formats:
        job.say("scoring the int8 model(s) on the test part")
        xt = test_inputs(job.run, job.test, job.test_source)
        int8 = score_int8_files(
            tmp,
            int8_formats,
            run_batches(exported_runner(job.module), xt),
            xt,
            job.test,
            len(job.run.classes),
            job.config.int8_tolerance,
        )
        if job.mode == "static":
            method = info[int8_formats[0]]["exporter"]
            quantized = {**int8[0], "method": method, "test_source": job.test_source}
    for fmt in int8_formats:
        runner = reload_runner(fmt, tmp / FILENAMES[fmt])
        agreement = compare(job.reference, run_batches(runner, job.inputs))
        files.append({"file": FILENAMES[fmt], "format": fmt, **info[fmt], "agreement": agreement})
    return files, quantized, int8


def _write_card(
    job: _Export,
    tmp: Path,
    files: list[dict[str, Any]],
    quantized: dict[str, Any] | None,
    int8: list[dict[str, Any]],
) -> dict[str, Any]:
    """The files' sizes and SHA-256, their costs, the model card and SHA256SUMS."""
    for entry in files:
        path = tmp / entry["file"]
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = sha256_file(path)
    parity_info = {
        "beats": len(job.inputs[0]),
        "source": job.source,
        "atol": job.config.atol,
        "passed": [f["file"] for f in files if "parity" in f],
    }
    model_costs = measure_costs(
        tmp, files, job.module, job.inputs, job.config.latency_threads, job.say
    )
    card = build_card(job.run, files, parity_info, quantized, job.notes)
    card["int8"] = int8
    card["costs"] = model_costs
    write_json(tmp / CARD_JSON, card)
    write_text(tmp / CARD_MD, card_markdown(card))
    names = [f["file"] for f in files] + [CARD_JSON, CARD_MD]
    write_text(tmp / SUMS, "".join(f"{sha256_file(tmp / n)}  {n}\n" for n in names))
    return card


def export_run(
    run_path: str | Path,
    *,
    formats: list[str],
    config: ExportConfig,
    out: str | Path | None = None,
    quantize: bool | str | None = False,
    data: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export, verify and describe a run; see the module docstring."""
    started = time.perf_counter()
    say = log or (lambda _msg: None)
    data_path = Path(data) if data else None
    job = _prepare(run_path, out, formats, config, quantize, data_path, force, say)
    with staged_dir(job.out_dir) as tmp:
        info = _write_files(job, tmp)
        files, quantized, int8 = _check_files(job, tmp, info)
        card = _write_card(job, tmp, files, quantized, int8)
        _place(tmp, job.out_dir, force)
    seconds = time.perf_counter() - started
    return ExportResult(Path(job.run.path), job.out_dir, files, card, seconds, job.notes)
