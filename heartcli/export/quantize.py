"""Static int8 of `heart export --quantize static`: calibration beats, ONNX QDQ, the score.

**Calibration** uses beats of the *training* part of the run's split (never the test part):
``[export] calibration_beats`` in all (default 2,000), drawn at random (seeded by ``[train]
seed``) in equal shares per class, a class with fewer beats than its share giving all it
has. Fewer calibration beats than classes is a UsageError: every class needs one.

**ONNX**: ONNX Runtime's ``quantize_static`` in the QDQ format: symmetric per-channel int8
weights, int8 activations, MinMax calibration on those beats; the final softmax stays float
so the probabilities keep their resolution.

**The score** (for every int8 file, ONNX and ExecuTorch alike): macro-F1 of the float
model and of the int8 file on the test part, the share of test beats on which both give
the same class, and the loss ``macro_f1_float - macro_f1_int8`` against ``[export]
int8_tolerance`` (default 0.005). A loss beyond it is written and flagged (the card and the
command say so; ``--strict`` makes the command exit 1), not refused: the figures are the
user's to judge.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.errors import UsageError
from heartcli.export.formats import quiet

if TYPE_CHECKING:
    from heartcli.data.dataset import BeatSet
    from heartcli.model.inference import Runner
    from heartcli.model.runs import LoadedRun

QUANTIZE_MODES = ("dynamic", "static")
CALIBRATION_BATCH = 256
# [export] calibration -> ONNX Runtime's CalibrationMethod, and its options
CALIBRATIONS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
CALIBRATION_OPTIONS: dict[str, dict[str, Any]] = {"percentile": {"CalibPercentile": 99.999}}


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

    root = logging.getLogger()
    level = root.level
    with quiet():
        root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs through the root logger
        try:
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
        finally:
            root.setLevel(level)
    saved = compact_onnx(dst)
    return {
        "compacted_bytes": saved,
        "exporter": "onnxruntime.quantization.quantize_static (QDQ; per-channel QInt8 "
        f"weights, QInt8 activations, {how} calibration; softmax left in float)",
        "calibration_method": method,
    }


def compact_onnx(path: Path) -> int:
    """Rewrite the ONNX file without the exporter's per-node metadata, doc strings and
    shape annotations, its inner tensors and nodes under short names (the graph's inputs
    and outputs keep theirs). The arithmetic is unchanged; returns the bytes saved."""
    import onnx

    before = path.stat().st_size
    proto = onnx.load(str(path))
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
        del init.metadata_props[:]
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.doc_string = ""
        del node.metadata_props[:]
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    del proto.metadata_props[:]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return before - path.stat().st_size


def score_int8(
    name: str,
    runner: Runner,
    test_inputs: list[np.ndarray],
    test: BeatSet,
    float_pred: np.ndarray,
    k: int,
    tolerance: float,
) -> dict[str, Any]:
    """Macro-F1 of the int8 file against the float model's on the test part."""
    from heartcli.metrics import confusion_matrix, macro_f1_from_confusion
    from heartcli.model.inference import batched

    pred = batched(runner, test_inputs).argmax(axis=1)
    f1_float = macro_f1_from_confusion(confusion_matrix(test.y, float_pred, k))
    f1_int8 = macro_f1_from_confusion(confusion_matrix(test.y, pred, k))
    loss = f1_float - f1_int8
    return {
        "file": name,
        "test_beats": len(test),
        "macro_f1_float": f1_float,
        "macro_f1_int8": f1_int8,
        "macro_f1_loss": loss,
        "agreement": float((pred == float_pred).mean()) if len(pred) else 1.0,
        "tolerance": tolerance,
        "within_tolerance": bool(loss <= tolerance),
    }
