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

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import ExportConfig
from heartcli.data.dataset import BeatSet
from heartcli.errors import HeartError, UsageError
from heartcli.export.card import CARD_JSON, CARD_MD, build_card, card_markdown
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
    export_onnx,
    export_pt2,
    export_torchscript,
    probability_module,
)
from heartcli.export.guard import check_replaceable
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
from heartcli.io import sha256_file, write_json, write_text

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun

__all__ = ["ExportResult", "ParityError", "export_run", "parse_formats"]

SUMS = "SHA256SUMS"


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
    old: Path | None = None
    check_replaceable(out, force)  # again: something may have been put there meanwhile
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif force:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            raise UsageError(f"{out} already exists; pass --force to replace it or choose --out")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    import torch

    from heartcli.model.runs import load_run

    started = time.perf_counter()
    say = log or (lambda _msg: None)
    run = load_run(run_path)
    out_dir = Path(out) if out is not None else Path(run.path) / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: a file is in the way; choose a folder")
    check_replaceable(out_dir, force)
    mode = quantize_mode(quantize)
    check_request(formats, mode)

    inputs, source, test, test_source = parity_beats(
        run, config.parity_beats, Path(data) if data else None
    )
    x = inputs[0]
    module = probability_module(run.model)
    reference = run_batches(exported_runner(module), inputs)
    example = tuple(torch.from_numpy(a[:2].copy()) for a in inputs)
    notes: list[str] = []
    if len(x) < config.parity_beats:
        notes.append(
            f"only {len(x):,} real beats were available for the parity check "
            f"(export.parity_beats = {config.parity_beats:,})"
        )

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give the folder mkdir's permissions
    except OSError as exc:
        raise HeartError(f"cannot write to {out_dir.parent}: {exc.strerror}") from None
    try:
        info: dict[str, dict[str, Any]] = {}
        exporters = {
            "onnx": lambda p: export_onnx(module, example, p, config.opset),
            "pt2": lambda p: export_pt2(module, example, p),
            "torchscript": lambda p: export_torchscript(module, example, p),
            "pte": lambda p: _export_pte(module, example, p),
        }
        for fmt in formats:
            say(f"exporting {FILENAMES[fmt]}")
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
                notes.append(info[fmt]["note"])
        int8: list[dict[str, Any]] = []
        if mode:
            written, _calibration = write_int8(
                tmp,
                formats,
                mode,
                module,
                example,
                run,
                config,
                Path(data) if data else None,
                say,
            )
            info.update(written)

        files: list[dict[str, Any]] = []
        for fmt in formats:
            say(f"checking {FILENAMES[fmt]} on {len(x):,} real beats")
            parity = check_parity(fmt, tmp / FILENAMES[fmt], inputs, reference, config.atol)
            files.append({"file": FILENAMES[fmt], "format": fmt, **info[fmt], "parity": parity})
        quantized = None
        if mode == "dynamic":
            say("scoring the int8 model")
            quantized = _quantized_report(tmp, inputs, reference, test, run, test_source)
        int8_formats: list[str] = [f for f in ("onnx-int8", "pte-int8") if f in info]
        if int8_formats:
            say("scoring the int8 model(s) on the test part")
            xt = test_inputs(run, test, test_source)
            int8 = score_int8_files(
                tmp,
                int8_formats,
                run_batches(exported_runner(module), xt),
                xt,
                test,
                len(run.classes),
                config.int8_tolerance,
            )
            if mode == "static":
                quantized = {
                    **int8[0],
                    "method": info[int8_formats[0]]["exporter"],
                    "test_source": test_source,
                }
        for fmt in int8_formats:
            agreement = compare(
                reference, run_batches(reload_runner(fmt, tmp / FILENAMES[fmt]), inputs)
            )
            files.append(
                {"file": FILENAMES[fmt], "format": fmt, **info[fmt], "agreement": agreement}
            )
        for entry in files:
            path = tmp / entry["file"]
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = sha256_file(path)
        parity_info = {
            "beats": len(x),
            "source": source,
            "atol": config.atol,
            "passed": [f["file"] for f in files if "parity" in f],
        }
        model_costs = measure_costs(tmp, files, module, inputs, config.latency_threads, say)
        card = build_card(run, files, parity_info, quantized, notes)
        card["int8"] = int8
        card["costs"] = model_costs
        write_json(tmp / CARD_JSON, card)
        write_text(tmp / CARD_MD, card_markdown(card))
        names = [f["file"] for f in files] + [CARD_JSON, CARD_MD]
        write_text(tmp / SUMS, "".join(f"{sha256_file(tmp / n)}  {n}\n" for n in names))
        _place(tmp, out_dir, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(Path(run.path), out_dir, files, card, time.perf_counter() - started, notes)
