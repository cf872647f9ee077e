"""The int8 files of `heart export --quantize`: calibration, quantising, the score, the card.

One module owns int8, whatever the format or the mode: :func:`write_int8` writes the
files, :func:`check_int8` scores each one the same way, and :class:`Int8Score` is the one
shape of its entry in the card's ``int8`` list (and the command's summary).

**Modes** (``--quantize``): ``dynamic`` writes ``model.int8.onnx`` with ONNX Runtime's
``quantize_dynamic`` (int8 weights, float activations; ONNX only, no calibration);
``static`` writes int8 weights *and* activations: ``model.int8.onnx`` (ONNX Runtime's
``quantize_static`` in the QDQ format: symmetric per-channel int8 weights, int8 activations,
``[export] calibration`` ranges; the final softmax stays float so the probabilities keep
their resolution) and, with ``--format pte``, ``model.int8.pte`` (PT2E: ``prepare_pt2e`` /
``convert_pt2e`` with ExecuTorch's ``XNNPACKQuantizer`` on the exported graph before it is
lowered, :func:`heartcli.export.pte.export_pte`), both calibrated on the same beats.

**Calibration** uses beats of the *training* part of the run's split (never the test part):
``[export] calibration_beats`` in all (default 2,000), drawn at random (seeded by ``[train]
seed``) in equal shares per class, a class with fewer beats than its share giving all it
has. Fewer calibration beats than classes is a UsageError: every class needs one.

**The score** (every int8 file, dynamic or static, ONNX or ExecuTorch): reloaded in its own
runtime, its agreement with PyTorch on the parity beats (the file's entry), and on the test
part the macro-F1 of the float model (PyTorch) and of the int8 file, the share of test
beats on which both give the same class, and the loss ``macro_f1_float - macro_f1_int8``
against ``[export] int8_tolerance`` (default 0.005). A loss beyond it is written and
flagged (the card and the command say so; ``--strict`` makes the command exit 1), not
refused: the figures are the user's to judge.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.errors import UsageError
from heartcli.export.formats import FILENAMES, compact_onnx, quiet

if TYPE_CHECKING:
    from torch import nn

    from heartcli.config import ExportConfig
    from heartcli.data.dataset import BeatSet
    from heartcli.model.inference import Runner
    from heartcli.model.runs import LoadedRun
    from heartcli.progress import Progress

QUANTIZE_MODES = ("dynamic", "static")
INT8_FORMATS = ("onnx-int8", "pte-int8")  # in the order they are written and scored
CALIBRATION_BATCH = 256
# [export] calibration -> ONNX Runtime's CalibrationMethod, and its options
CALIBRATIONS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
CALIBRATION_OPTIONS: dict[str, dict[str, Any]] = {"percentile": {"CalibPercentile": 99.999}}
DYNAMIC_ONNX = "onnxruntime quantize_dynamic (QInt8)"
PT2E_PROGRAM = (
    "PT2E static int8 (XNNPACKQuantizer: symmetric per-channel int8 weights, "
    "int8 activations), XNNPACK"
)


def quantize_mode(value: bool | str | None) -> str | None:
    """``--quantize`` as a mode: None, "dynamic" or "static" (True means "dynamic")."""
    if value is None or value is False:
        return None
    mode = "dynamic" if value is True else str(value)
    if mode not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {mode}: use dynamic or static")
    return mode


def check_int8_request(formats: list[str], mode: str | None) -> None:
    """The format / quantisation combinations, before anything is computed."""
    if mode == "dynamic" and "onnx" not in formats:
        raise UsageError("--quantize makes an int8 copy of the ONNX model; add --format onnx")
    if mode == "static" and not {"onnx", "pte"} & set(formats):
        raise UsageError(
            "--quantize static makes int8 copies of the ONNX and ExecuTorch models; "
            "add --format onnx or --format pte"
        )


# ----------------------------------------------------------------------------- calibration


def calibration_beats(
    run: LoadedRun, count: int, data: Path | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``count`` training beats drawn per class, as the model's inputs, and a description."""
    from heartcli.data.dataset import load_split, split_path
    from heartcli.export.parity import REPO_SAMPLE, _dataset_dir
    from heartcli.model.inference import model_inputs, uses_rhythm

    k = len(run.classes)
    if count < k:
        raise UsageError(
            f"export.calibration_beats = {count} is fewer than the model's {k} classes; "
            f"calibrate on at least one beat per class (e.g. --set export.calibration_beats=2000)"
        )
    split = str((run.manifest.get("data") or {}).get("split") or run.config.data.split)
    folder = data if data is not None and data.is_dir() else _dataset_dir(run)
    if not split_path(folder, split, "train").exists():
        folder = REPO_SAMPLE
    train = load_split(folder, split, "train", classes=dict(run.config.data.classes))
    chosen = _draw(train, count, k, int(run.config.train.seed))
    where = f"{folder} (split {split}, train part)"
    inputs = model_inputs(
        train.x[chosen], _rows(train.rhythm, chosen), uses_rhythm(run.model), where
    )
    counts = np.bincount(train.y[chosen], minlength=k)
    if len(chosen) < k or (counts == 0).any():
        missing = [run.classes[i] for i in np.flatnonzero(counts == 0)]
        raise UsageError(
            f"{where}: no training beats of class {', '.join(missing)} to calibrate on; "
            "use the run's own dataset (--data DIR)"
        )
    described = {
        "beats": len(chosen),
        "source": where,
        "per_class": {run.classes[i]: int(c) for i, c in enumerate(counts)},
        "draw": f"export.calibration_beats = {count}, equal shares per class, seed "
        f"{run.config.train.seed}; never the test part",
    }
    return [np.ascontiguousarray(a, dtype=np.float32) for a in inputs], described


def _rows(values: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[index]


def _draw(train: BeatSet, count: int, k: int, seed: int) -> np.ndarray:
    """Row indices: ``count`` in equal shares per class (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    share, extra = divmod(count, k)
    picks = []
    for c in range(k):
        rows = np.flatnonzero(train.y == c)
        want = share + (1 if c < extra else 0)
        picks.append(rng.choice(rows, size=min(want, len(rows)), replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


# ------------------------------------------------------------------------------ quantising


@contextlib.contextmanager
def _quantizer_quiet() -> Iterator[None]:
    """The exporters' quiet, and the root logger ONNX Runtime's quantizer logs through at
    ERROR (restored after)."""
    root = logging.getLogger()
    level = root.level
    with quiet():
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def quantize_onnx_dynamic(src: Path, dst: Path) -> dict[str, Any]:
    """A dynamic int8 copy of the ONNX model at ``src`` (ONNX Runtime's quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quantizer_quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return {"exporter": DYNAMIC_ONNX}


def quantize_onnx_static(
    src: Path, dst: Path, calibration: list[np.ndarray], method: str = "minmax"
) -> dict[str, Any]:
    """The static QDQ int8 copy of the float ONNX model at ``src``; ``method`` is one of
    ``CALIBRATIONS`` (``[export] calibration``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    how = CALIBRATIONS[method]

    graph = onnx.load(str(src)).graph
    names = [i.name for i in graph.input]
    softmax = [n.name for n in graph.node if n.op_type == "Softmax"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(calibration[0])
            # batches of one size: the histogram methods stack every batch's activations
            size = max(b for b in range(1, min(CALIBRATION_BATCH, n) + 1) if n % b == 0)
            self.batches = iter(
                {name: a[i : i + size] for name, a in zip(names, calibration, strict=True)}
                for i in range(0, n, size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _quantizer_quiet():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, how),
            nodes_to_exclude=softmax,
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                **CALIBRATION_OPTIONS.get(method, {}),
            },
        )
    saved = compact_onnx(dst)
    return {
        "compacted_bytes": saved,
        "exporter": "onnxruntime.quantization.quantize_static (QDQ; per-channel QInt8 "
        f"weights, QInt8 activations, {how} calibration; softmax left in float)",
        "calibration_method": method,
    }


def export_pte_int8(
    module: nn.Module, example: tuple[Any, ...], path: Path, calibration: list[np.ndarray]
) -> dict[str, Any]:
    """The PT2E static int8 ExecuTorch program of ``module``, calibrated on ``calibration``
    (the model's inputs: beats, and rhythm for a rhythm model)."""
    from heartcli.export.pte import export_pte

    return export_pte(
        module,
        example,
        path,
        transform=lambda graph: _pt2e(graph, calibration),
        program=PT2E_PROGRAM,
    )


def _pt2e(graph: Any, calibration: list[np.ndarray]) -> Any:
    """PT2E: the exported graph with XNNPACK's int8 observers, calibrated, converted."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from heartcli.model.inference import BATCH

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    n = len(calibration[0])
    with torch.no_grad():
        for i in range(0, n, BATCH):
            prepared(
                *[torch.from_numpy(np.ascontiguousarray(a[i : i + BATCH])) for a in calibration]
            )
    return convert_pt2e(prepared)


@dataclass
class Int8Files:
    """What :func:`write_int8` wrote: the mode, the calibration beats described (None for
    dynamic) and each int8 format's exporter information."""

    mode: str
    calibration: dict[str, Any] | None = None
    info: dict[str, dict[str, Any]] = field(default_factory=dict)


def write_int8(
    tmp: Path,
    formats: list[str],
    mode: str,
    module: nn.Module,
    example: tuple[Any, ...],
    run: LoadedRun,
    config: ExportConfig,
    data: Path | None,
    progress: Progress,
) -> Int8Files:
    """The int8 files of ``mode`` beside the float ones in ``tmp`` (``model.onnx`` first)."""
    written = Int8Files(mode)
    if mode == "dynamic":
        progress.stage(f"quantising to {FILENAMES['onnx-int8']} (dynamic)")
        written.info["onnx-int8"] = quantize_onnx_dynamic(
            tmp / FILENAMES["onnx"], tmp / FILENAMES["onnx-int8"]
        )
        return written
    progress.stage(f"drawing {config.calibration_beats:,} calibration beats from the training part")
    calibration, written.calibration = calibration_beats(run, config.calibration_beats, data)
    beats = written.calibration["beats"]
    if "onnx" in formats:
        progress.stage(f"quantising to {FILENAMES['onnx-int8']} (static, {beats:,} beats)")
        written.info["onnx-int8"] = quantize_onnx_static(
            tmp / FILENAMES["onnx"], tmp / FILENAMES["onnx-int8"], calibration, config.calibration
        )
    if "pte" in formats:
        progress.stage(f"quantising to {FILENAMES['pte-int8']} (PT2E, {beats:,} beats)")
        written.info["pte-int8"] = export_pte_int8(
            module, example, tmp / FILENAMES["pte-int8"], calibration
        )
    return written


# ---------------------------------------------------------------------------------- score


@dataclass(frozen=True)
class Int8Score:
    """The one result shape of an int8 file: its entry in the card's ``int8`` list."""

    file: str
    format: str  # onnx-int8 or pte-int8
    mode: str  # dynamic or static
    method: str  # how it was quantised
    calibration: dict[str, Any] | None  # the calibration beats; None for dynamic
    test_beats: int
    test_source: str
    macro_f1_float: float  # the PyTorch model's, on the same test beats
    macro_f1_int8: float
    macro_f1_loss: float  # macro_f1_float - macro_f1_int8
    agreement: float  # share of test beats with the float model's class
    tolerance: float  # [export] int8_tolerance
    within_tolerance: bool


INT8_KEYS = tuple(f.name for f in fields(Int8Score))


@dataclass
class TestPart:
    """The test beats every int8 file is scored on, with the float model's classes."""

    beats: BeatSet
    source: str
    inputs: list[np.ndarray]  # the model's inputs for them
    float_pred: np.ndarray  # the PyTorch model's class for each
    k: int  # the model's classes


def score_int8(
    fmt: str, runner: Runner, written: Int8Files, part: TestPart, tolerance: float
) -> Int8Score:
    """Macro-F1 of one int8 file against the float model's on the test part."""
    from heartcli.metrics import confusion_matrix, macro_f1_from_confusion
    from heartcli.model.inference import batched

    y, float_pred = part.beats.y, part.float_pred
    pred = batched(runner, part.inputs).argmax(axis=1)
    f1_float = macro_f1_from_confusion(confusion_matrix(y, float_pred, part.k))
    f1_int8 = macro_f1_from_confusion(confusion_matrix(y, pred, part.k))
    loss = f1_float - f1_int8
    info = written.info[fmt]
    return Int8Score(
        file=FILENAMES[fmt],
        format=fmt,
        mode=written.mode,
        method=str(info.get("program") or info["exporter"]),
        calibration=written.calibration,
        test_beats=len(part.beats),
        test_source=part.source,
        macro_f1_float=f1_float,
        macro_f1_int8=f1_int8,
        macro_f1_loss=loss,
        agreement=float((pred == float_pred).mean()) if len(pred) else 1.0,
        tolerance=tolerance,
        within_tolerance=bool(loss <= tolerance),
    )


def check_int8(
    tmp: Path,
    written: Int8Files,
    module: nn.Module,
    run: LoadedRun,
    parity: tuple[list[np.ndarray], np.ndarray],
    test: tuple[BeatSet, str],
    tolerance: float,
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each int8 file reloaded in its own runtime: its entry in the card's files (its
    exporter's information and its agreement with PyTorch on the ``parity`` beats, inputs
    and PyTorch's probabilities) and its :class:`Int8Score` on the ``test`` part (beats and
    their source), as JSON-able dicts."""
    from heartcli.export.parity import (
        compare,
        exported_runner,
        reload_runner,
        run_batches,
        test_inputs,
    )

    inputs, reference = parity
    beats, source = test
    xt = test_inputs(run, beats, source)
    float_pred = run_batches(exported_runner(module), xt).argmax(axis=1)
    part = TestPart(beats, source, xt, float_pred, len(run.classes))
    files: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    for fmt in [f for f in INT8_FORMATS if f in written.info]:
        name = FILENAMES[fmt]
        progress.stage(f"scoring {name} against the float model on {len(beats):,} test beats")
        runner = reload_runner(fmt, tmp / name)
        scores.append(asdict(score_int8(fmt, runner, written, part, tolerance)))
        agreement = compare(reference, run_batches(runner, inputs))
        files.append({"file": name, "format": fmt, **written.info[fmt], "agreement": agreement})
    return files, scores


def beyond_tolerance(scores: list[dict[str, Any]]) -> str | None:
    """What ``--strict`` fails with: a line per int8 file that loses more test macro-F1
    than its tolerance (None when none does)."""
    lines = [
        f"{q['file']} loses {q['macro_f1_loss']:.4f} test macro-F1 (> export.int8_tolerance "
        f"{q['tolerance']:g}); it was written and the card says so; --strict fails the export"
        for q in scores
        if not q["within_tolerance"]
    ]
    return "\n".join(lines) or None


def int8_markdown(scores: list[dict[str, Any]]) -> list[str]:
    """The card's Int8 section: each int8 file against the float model on the test part; a
    loss beyond tolerance is flagged in bold (and red where the renderer shows colour)."""
    if not scores:
        return []
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
        cal = q["calibration"]
        calibration = (
            f"{cal['beats']:,} training beats ({cal['per_class']})" if cal else "none (dynamic)"
        )
        verdict = (
            "yes"
            if q["within_tolerance"]
            else '<span style="color:red">**NO: beyond tolerance**</span>'
        )
        lines.append(
            f"| {q['file']} | {q['method']} | {calibration} | "
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
