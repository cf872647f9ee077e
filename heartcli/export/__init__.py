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
and the card says so. ``--format pte`` adds an ExecuTorch program
(:mod:`heartcli.export.pte`, the extra ``heart[edge]``). ``--quantize dynamic|static``
adds int8 files (:mod:`heartcli.export.int8`), which are not held to ``atol``: each is
scored on the test part against the float model and held to ``[export] int8_tolerance``
of macro-F1 (a bigger loss is flagged, not refused), one entry of the same shape per file
in the card's ``int8``. Every card carries the costs (:mod:`heartcli.export.costs`).

The steps are told to a :class:`heartcli.progress.Progress` (``stage``: each file
written, checked, quantised, scored and timed); the service prints nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import ExportConfig
from heartcli.data.dataset import BeatSet
from heartcli.errors import HeartError, UsageError
from heartcli.export.card import build_card, card_markdown
from heartcli.export.costs import measure_costs
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
from heartcli.export.int8 import (
    Int8Files,
    beyond_tolerance,
    check_int8,
    check_int8_request,
    quantize_mode,
    write_int8,
)
from heartcli.export.parity import (
    ParityError,
    check_parity,
    exported_runner,
    parity_beats,
    run_batches,
)
from heartcli.io import place_dir, sha256_file, staged_dir, write_json, write_text
from heartcli.progress import Progress

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
            "int8": self.card.get("int8"),
            "int8_within_tolerance": all(
                q["within_tolerance"] for q in self.card.get("int8") or []
            ),
            "costs": self.card.get("costs"),
            "evaluation": self.card["evaluation"].get("status"),
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }

    def beyond_tolerance(self) -> str | None:
        """What ``--strict`` fails with: a line per int8 file beyond tolerance, or None."""
        return beyond_tolerance(self.card.get("int8") or [])


def parse_formats(values: list[str] | None, default: list[str]) -> list[str]:
    """``--format`` values (repeatable, ``all``) -> formats in canonical order."""
    wanted = set(values or default)
    if "all" in wanted:
        wanted = (wanted - {"all"}) | set(FORMATS)
    unknown = sorted(wanted - set(FORMATS) - set(EDGE_FORMATS))
    if unknown:
        raise UsageError(f"--format {unknown[0]}: use onnx, pt2, torchscript, pte or all")
    return [f for f in (*FORMATS, *EDGE_FORMATS) if f in wanted]


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
    progress: Progress
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
    progress: Progress,
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
    if "pte" in formats:
        from heartcli.export.pte import require_executorch

        require_executorch()
    check_int8_request(formats, mode)
    if "onnx" in formats:
        check_opset(config.opset)
    beats = parity_beats(run, config.parity_beats, data)
    module = probability_module(run.model)
    inputs = beats[0]
    example = tuple(torch.from_numpy(a[:2].copy()) for a in inputs)
    reference = run_batches(exported_runner(module), inputs)
    job = _Export(
        run, out_dir, config, formats, mode, data, progress, module, example, reference, *beats
    )
    if len(inputs[0]) < config.parity_beats:
        job.notes.append(
            f"only {len(inputs[0]):,} real beats were available for the parity check "
            f"(export.parity_beats = {config.parity_beats:,})"
        )
    return job


def _write_files(job: _Export, tmp: Path) -> tuple[dict[str, dict[str, Any]], Int8Files | None]:
    """Every requested file into ``tmp``: {format: exporter info}; and the int8 ones of
    ``--quantize`` (None without it)."""
    module, example = job.module, job.example
    exporters = {
        "onnx": lambda p: export_onnx(module, example, p, job.config.opset),
        "pt2": lambda p: export_pt2(module, example, p),
        "torchscript": lambda p: export_torchscript(module, example, p),
        "pte": lambda p: _export_pte(module, example, p),
    }
    info: dict[str, dict[str, Any]] = {}
    for fmt in job.formats:
        job.progress.stage(f"exporting {FILENAMES[fmt]}")
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
    if not job.mode:
        return info, None
    written = write_int8(
        tmp, job.formats, job.mode, module, example, job.run, job.config, job.data, job.progress
    )
    return info, written


def _check_files(
    job: _Export, tmp: Path, info: dict[str, dict[str, Any]], written: Int8Files | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each file reloaded in its runtime: the float ones held to ``atol``, the int8 ones
    scored on the test part. Returns the files' entries and the card's ``int8``."""
    files: list[dict[str, Any]] = []
    for fmt in job.formats:
        job.progress.stage(f"checking {FILENAMES[fmt]} on {len(job.inputs[0]):,} real beats")
        parity = check_parity(fmt, tmp / FILENAMES[fmt], job.inputs, job.reference, job.config.atol)
        files.append({"file": FILENAMES[fmt], "format": fmt, **info[fmt], "parity": parity})
    if written is None:
        return files, []
    int8_files, scores = check_int8(
        tmp,
        written,
        job.module,
        job.run,
        (job.inputs, job.reference),
        (job.test, job.test_source),
        job.config.int8_tolerance,
        job.progress,
    )
    return files + int8_files, scores


def _write_card(
    job: _Export, tmp: Path, files: list[dict[str, Any]], int8: list[dict[str, Any]]
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
        tmp, files, job.module, job.inputs, job.config.latency_threads, job.progress
    )
    card = build_card(job.run, files, parity_info, int8, job.notes)
    card["costs"] = model_costs
    job.progress.stage(f"writing {CARD_JSON}, {CARD_MD} and {SUMS}")
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
    progress: Progress | None = None,
) -> ExportResult:
    """Export, verify and describe a run; see the module docstring. ``progress`` is told
    each step (``start``, then a ``stage`` per file written, checked, scored and timed)."""
    started = time.perf_counter()
    progress = progress or Progress()
    data_path = Path(data) if data else None
    job = _prepare(run_path, out, formats, config, quantize, data_path, force, progress)
    progress.start(
        {
            "run": str(job.run.path),
            "out": str(job.out_dir),
            "formats": formats,
            "quantize": job.mode,
        }
    )
    with staged_dir(job.out_dir) as tmp:
        info, written = _write_files(job, tmp)
        files, int8 = _check_files(job, tmp, info, written)
        card = _write_card(job, tmp, files, int8)
        _place(tmp, job.out_dir, force)
    seconds = time.perf_counter() - started
    return ExportResult(Path(job.run.path), job.out_dir, files, card, seconds, job.notes)
