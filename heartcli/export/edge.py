"""The device side of `heart export`: int8 files, ExecuTorch programs and the costs.

:func:`write_int8` writes the int8 files asked for (``--quantize dynamic``: the dynamic
ONNX copy; ``--quantize static``: the static QDQ ONNX model and, with ``--format pte``, the
PT2E int8 ExecuTorch program, both calibrated on the same training beats);
:func:`score_int8_files` scores each on the test part against the float model
(:mod:`heartcli.export.quantize`); :func:`measure_costs` adds the model's parameters,
multiply-adds and peak activation estimate, and each file's size and latency
(:mod:`heartcli.export.costs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import ExportConfig
from heartcli.errors import UsageError
from heartcli.export.formats import FILENAMES, quantize_onnx
from heartcli.export.quantize import QUANTIZE_MODES, calibration_beats, quantize_onnx_static

if TYPE_CHECKING:
    from torch import nn

    from heartcli.data.dataset import BeatSet
    from heartcli.model.runs import LoadedRun


def quantize_mode(value: bool | str | None) -> str | None:
    """``--quantize`` as a mode: None, "dynamic" or "static" (True means "dynamic")."""
    if value is None or value is False:
        return None
    mode = "dynamic" if value is True else str(value)
    if mode not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {mode}: use dynamic or static")
    return mode


def check_request(formats: list[str], mode: str | None) -> None:
    """The format / quantisation combinations, before anything is computed."""
    if "pte" in formats:
        from heartcli.export.pte import require_executorch

        require_executorch()
    if mode == "dynamic" and "onnx" not in formats:
        raise UsageError("--quantize makes an int8 copy of the ONNX model; add --format onnx")
    if mode == "static" and not {"onnx", "pte"} & set(formats):
        raise UsageError(
            "--quantize static makes int8 copies of the ONNX and ExecuTorch models; "
            "add --format onnx or --format pte"
        )


def write_int8(
    tmp: Path,
    formats: list[str],
    mode: str,
    module: nn.Module,
    example: tuple[Any, ...],
    run: LoadedRun,
    config: ExportConfig,
    data: Path | None,
    say: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The int8 files in ``tmp``: {format: exporter info}, and the calibration described."""
    info: dict[str, dict[str, Any]] = {}
    if mode == "dynamic":
        say(f"quantising to {FILENAMES['onnx-int8']}")
        quantize_onnx(tmp / FILENAMES["onnx"], tmp / FILENAMES["onnx-int8"])
        info["onnx-int8"] = {"exporter": "onnxruntime quantize_dynamic (QInt8)"}
        return info, None
    calibration, described = calibration_beats(run, config.calibration_beats, data)
    if "onnx" in formats:
        say(f"quantising to {FILENAMES['onnx-int8']} (static, {described['beats']:,} beats)")
        info["onnx-int8"] = quantize_onnx_static(
            tmp / FILENAMES["onnx"], tmp / FILENAMES["onnx-int8"], calibration, config.calibration
        )
    if "pte" in formats:
        from heartcli.export.pte import export_pte

        say(f"quantising to {FILENAMES['pte-int8']} (PT2E, {described['beats']:,} beats)")
        info["pte-int8"] = export_pte(module, example, tmp / FILENAMES["pte-int8"], calibration)
    for entry in info.values():
        entry["calibration"] = described
    return info, described


def score_int8_files(
    tmp: Path,
    names: list[str],
    reference_test: np.ndarray,
    test_inputs: list[np.ndarray],
    test: BeatSet,
    k: int,
    tolerance: float,
) -> list[dict[str, Any]]:
    """Each int8 file's macro-F1 and agreement against the float model on the test part."""
    from heartcli.export.parity import reload_runner
    from heartcli.export.quantize import score_int8

    float_pred = reference_test.argmax(axis=1)
    return [
        score_int8(
            FILENAMES[fmt],
            reload_runner(fmt, tmp / FILENAMES[fmt]),
            test_inputs,
            test,
            float_pred,
            k,
            tolerance,
        )
        for fmt in names
    ]


def measure_costs(
    tmp: Path,
    files: list[dict[str, Any]],
    model: nn.Module,
    inputs: list[np.ndarray],
    threads: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The model's costs; each file's bytes and latency go into its entry of ``files``."""
    from heartcli.export.costs import latency, model_costs

    figures = model_costs(model, inputs)
    for entry in files:
        say(f"timing {entry['file']} ({threads} thread(s))")
        entry["latency"] = latency(entry["format"], tmp / entry["file"], inputs, threads)
    return figures
