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
and the card says so. ``--quantize`` adds a dynamic int8 copy (ONNX Runtime's
``quantize_dynamic``), which is not held to ``atol``: its agreement with the float model
and both test macro-F1 are in the card.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli import __version__
from heartcli.config import ExportConfig
from heartcli.dataset import BeatSet, load_split, read_beats
from heartcli.errors import DataError, HeartError, UsageError
from heartcli.io import read_json, sha256_file, write_json, write_text

if TYPE_CHECKING:
    from torch import nn

    from heartcli.runs import LoadedRun

FORMATS = ("onnx", "pt2", "torchscript")
FILENAMES = {
    "onnx": "model.onnx",
    "pt2": "model.pt2",
    "torchscript": "model.torchscript.pt",
    "onnx-int8": "model.int8.onnx",
}
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
SUMS = "SHA256SUMS"
INPUT_NAME = "beats"
OUTPUT_NAME = "probabilities"
BATCH = 256
REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
RECIPE = [
    "one ECG lead in raw ADC units, no filtering (MLII: channel 0 of the MIT-BIH records, "
    "heart predict picks the lead named MLII)",
    "at 360 Hz (records at other rates are resampled with an anti-aliasing polyphase filter)",
    "boundaries: the record's annotations (heart predict: R-peaks detected by XQRS when "
    "there is no .atr)",
    "a beat starts at its R-peak r0 and ends 20% of the next RR interval past the next "
    "R-peak r1: x[r0 : r1 + (r2 - r1) // 5 : 3], every third sample (120 Hz)",
    "min-max normalised over the whole segment to [0, 1] (float64), the first 187 values "
    "kept, cast to float32 and zero-padded to 187",
]
AAMI_DESCRIPTIONS = {
    "N": "normal, left/right bundle branch block, atrial/nodal escape (N L R e j)",
    "S": "supraventricular ectopic (A a J S)",
    "V": "ventricular ectopic (V E)",
    "F": "fusion of ventricular and normal (F)",
    "Q": "paced, fusion of paced and normal, unclassifiable (/ f Q)",
}


class ParityError(HeartError):
    """An exported file disagrees with the PyTorch model."""


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
            "evaluation": self.card["evaluation"].get("status"),
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


def parse_formats(values: list[str] | None, default: list[str]) -> list[str]:
    """``--format`` values (repeatable, ``all``) -> formats in canonical order."""
    wanted = set(values or default)
    if "all" in wanted:
        wanted = set(FORMATS)
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise UsageError(f"--format {unknown[0]}: use onnx, pt2, torchscript or all")
    return [f for f in FORMATS if f in wanted]


# --------------------------------------------------------------------------- beats


def _dataset_dir(run: LoadedRun) -> Path:
    data = run.manifest.get("data") or {}
    return Path(str(data.get("dir") or run.config.data.dir))


def parity_beats(
    run: LoadedRun, count: int, data: Path | None = None
) -> tuple[np.ndarray, str, BeatSet, str]:
    """At least ``count`` real beats (when there are that many) and the test beats.

    From ``data`` (a dataset folder or a parquet file) or else the run's dataset, falling
    back to the bundled sample of real beats; the test part first, then the training part.
    Returns (beats for the parity check, where they came from, the test beats, their source).
    """
    split = str((run.manifest.get("data") or {}).get("split") or run.config.data.split)
    if data is not None and data.is_file():
        beats = read_beats(data)
        test = beats
        parts = [(beats, f"{data}")]
    else:
        folder = data if data is not None else _dataset_dir(run)
        if data is None and not (folder / "manifest.json").exists():
            if not (REPO_SAMPLE / "manifest.json").exists():
                raise DataError(
                    f"{folder}: the run's dataset is not here; pass --data DIR with real beats "
                    "for the parity check"
                )
            folder = REPO_SAMPLE
        if not (folder / split / "test.parquet").exists() and (folder / "manifest.json").exists():
            from heartcli.dataset import read_manifest

            split = next(iter(read_manifest(folder).get("splits") or {split: 0}), split)
        test = load_split(folder, split, "test")
        test_source = f"{folder} (split {split}, test part)"
        parts = [(test, test_source)]
        if len(test) < count:
            parts.append((load_split(folder, split, "train"), f"{folder} (split {split}, train)"))
    chosen: list[np.ndarray] = []
    described: list[str] = []
    need = count
    for beats, where in parts:
        if need <= 0:
            break
        take = beats.x[:need]
        chosen.append(take)
        described.append(f"{len(take):,} from {where}")
        need -= len(take)
    x = np.concatenate(chosen) if chosen else np.zeros((0, run.input_length), np.float32)
    if x.shape[1] != run.input_length:
        raise DataError(
            f"parity beats have {x.shape[1]} samples but the model takes {run.input_length}; "
            "pass --data with the run's kind of beats"
        )
    if len(x) == 0:
        raise DataError("no real beats for the parity check; pass --data DIR")
    return np.ascontiguousarray(x, dtype=np.float32), "; ".join(described), test, test_source


# --------------------------------------------------------------------------- exporters


def _probability_module(model: nn.Module) -> nn.Module:
    import torch
    from torch import nn

    class Probabilities(nn.Module):
        """The run's CNN followed by a softmax: beats -> class probabilities."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, beats: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(beats), dim=1)

    return Probabilities(model).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' banners, deprecation warnings and log lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(module: nn.Module, example: Any, path: Path, opset: int) -> dict[str, Any]:
    """ONNX with a dynamic batch axis; the dynamo exporter, else the TorchScript-based one."""
    import onnx
    import torch

    common: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
    }
    exporter = "torch.onnx.export(dynamo=True)"
    try:
        with _quiet():
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamic_shapes={"beats": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
                **common,
            )
    except Exception as first:  # the new exporter raises many types; fall back once
        exporter = (
            f"torch.onnx.export(dynamo=False) (dynamo exporter failed: {type(first).__name__})"
        )
        path.unlink(missing_ok=True)
        try:
            with _quiet():
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    dynamo=False,
                    **common,
                )
        except Exception as exc:
            raise HeartError(
                f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None
    proto = onnx.load(str(path))
    converted = conv1d_as_conv2d(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    return {
        "exporter": exporter,
        "opset": opsets.get("ai.onnx", opset),
        "graph": f"{converted} Conv1d layers written as Conv2d with a 1 x k kernel "
        "(ONNX Runtime's 2-D convolutions are faster on CPU; the parity check covers it)",
    }


def conv1d_as_conv2d(proto: Any) -> int:
    """Rewrite every 1-D Conv of ``proto`` in place as Unsqueeze -> 2-D Conv -> Squeeze.

    The same arithmetic on a [batch, channels, 1, length] view: ONNX Runtime runs 2-D
    convolutions through its blocked NCHWc kernels, about 1.3-2x faster than its 1-D path.
    Returns how many convolutions were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    axis = "heart_length_axis"
    nodes, count = [], 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is None or len(weight.dims) != 3:
            nodes.append(node)
            continue
        count += 1
        weight.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(weight)[:, :, None, :], weight.name)
        )
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        del node.attribute[:]
        for key, value in attrs.items():
            if key in ("kernel_shape", "strides", "dilations"):
                value = [1, *value]
            elif key == "pads":
                value = [0, value[0], 0, value[1]]
            node.attribute.append(helper.make_attribute(key, value))
        inside, outside = f"{node.input[0]}__2d{count}", node.output[0]
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], axis], [inside]))
        node.input[0] = inside
        node.output[0] = f"{outside}__2d{count}"
        nodes.append(node)
        nodes.append(helper.make_node("Squeeze", [node.output[0], axis], [outside]))
    if count:
        graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axis))
        del graph.node[:]
        graph.node.extend(nodes)
        # The exporter's intermediate shape annotations described the 1-D graph; they are
        # optional, and ONNX Runtime infers the new ones itself.
        del graph.value_info[:]
    return count


def export_pt2(module: nn.Module, example: Any, path: Path) -> dict[str, Any]:
    import torch

    with _quiet():
        program = torch.export.export(
            module, (example,), dynamic_shapes={"beats": {0: torch.export.Dim("batch", min=1)}}
        )
        torch.export.save(program, str(path))
    return {"exporter": "torch.export.export + torch.export.save", "load": "torch.export.load"}


def export_torchscript(module: nn.Module, example: Any, path: Path) -> dict[str, Any]:
    import torch

    with _quiet():
        traced = torch.jit.trace(module, (example,), check_trace=False)
        traced.save(str(path))
    return {
        "exporter": "torch.jit.trace",
        "load": "torch.jit.load",
        "note": f"TorchScript is deprecated in torch {torch.__version__.split('+')[0]}; "
        "prefer model.pt2 or model.onnx",
    }


# --------------------------------------------------------------------------- runners


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ParityError(
            f"{path.name}: ONNX Runtime cannot load the export ({type(exc).__name__})"
        ) from None
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def torch_runner(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(module(torch.from_numpy(x)).numpy())

    return run


def reload_runner(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The exported file, loaded back from disk in its own runtime."""
    import torch

    if fmt in ("onnx", "onnx-int8"):
        return onnx_runner(path)
    with _quiet():
        if fmt == "pt2":
            return torch_runner(torch.export.load(str(path)).module())
        return torch_runner(torch.jit.load(str(path), map_location="cpu"))


def run_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    same = got.argmax(axis=1) == reference.argmax(axis=1)
    return {
        "beats": len(reference),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "argmax_agreement": float(same.mean()) if len(same) else 1.0,
        "argmax_disagreements": int((~same).sum()),
    }


def check_parity(
    fmt: str, path: Path, x: np.ndarray, reference: np.ndarray, atol: float
) -> dict[str, Any]:
    """The reloaded export against the PyTorch probabilities; raises ParityError."""
    try:
        run = reload_runner(fmt, path)
        got = run_batches(run, x)
        single = run(x[:1])  # the batch axis is dynamic: one beat works too
    except ParityError:
        raise
    except Exception as exc:  # a damaged file fails to load or run in many ways
        raise ParityError(
            f"{path.name}: the reloaded export does not run ({type(exc).__name__}); "
            "nothing was written"
        ) from None
    result = compare(reference, got)
    result["max_abs_diff"] = max(
        result["max_abs_diff"], float(np.abs(single - reference[:1]).max())
    )
    if got.shape != reference.shape or result["max_abs_diff"] > atol:
        raise ParityError(
            f"{path.name}: parity check failed: max |p - p_torch| = {result['max_abs_diff']:.2e} "
            f"> export.atol {atol:g} on {len(x):,} beats; nothing was written"
        )
    if result["argmax_disagreements"]:
        raise ParityError(
            f"{path.name}: parity check failed: {result['argmax_disagreements']} of {len(x):,} "
            "beats get another class than from PyTorch; nothing was written"
        )
    return result


# --------------------------------------------------------------------------- model card


def _evaluation(run: LoadedRun) -> dict[str, Any]:
    path = Path(run.path) / "eval.json"
    if not path.is_file():
        return {"status": "not evaluated", "note": f"run `heart evaluate {run.path}`, then export"}
    try:
        figures = read_json(path, "evaluate again")
    except DataError:
        return {"status": "not evaluated", "note": f"{path} is unreadable; evaluate again"}
    keep = ("data", "split", "n", "accuracy", "balanced_accuracy", "macro_f1", "macro_f1_ci95")
    result: dict[str, Any] = {"status": "evaluated", **{k: figures.get(k) for k in keep}}
    result["per_class"] = {
        name: {k: c.get(k) for k in ("precision", "recall", "f1", "support")}
        for name, c in (figures.get("per_class") or {}).items()
    }
    weights = Path(run.path) / "model.safetensors"
    if weights.exists() and path.stat().st_mtime < weights.stat().st_mtime:
        result["status"] = "stale"
        result["note"] = "eval.json is older than the weights; run `heart evaluate` again"
    return result


def build_card(
    run: LoadedRun,
    files: list[dict[str, Any]],
    parity: dict[str, Any],
    quantized: dict[str, Any] | None,
    notes: list[str],
) -> dict[str, Any]:
    from heartcli.predict import _training_lead

    data = run.manifest.get("data") or {}
    k = len(run.classes)
    return {
        "format": "heart-model-card/1",
        "name": Path(run.path).name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "heart_version": __version__,
        "task": "single-beat ECG classification into AAMI EC57 classes (MIT-BIH Arrhythmia)",
        "classes": list(run.classes),
        "class_descriptions": {c: AAMI_DESCRIPTIONS.get(c, "") for c in run.classes},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", run.input_length],
            "dtype": "float32",
            "length": run.input_length,
            "sampling_rate_hz": run.manifest.get("sampling_rate_hz") or 120.0,
            "normalisation": "min-max over the beat's whole segment to [0, 1], zero-padded",
            "lead": _training_lead(run.manifest, run.config.data.lead),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", k],
            "dtype": "float32",
            "meaning": "softmax probabilities, one column per class in `classes` order",
        },
        "preprocessing": RECIPE,
        "training": {
            "run": str(run.path),
            "data_dir": data.get("dir"),
            "split": data.get("split"),
            "data_manifest_sha256": data.get("manifest_sha256"),
            "train_counts": data.get("train_counts"),
            "resampled_counts": data.get("resampled_counts"),
            "validation_counts": data.get("val_counts"),
            "resample": run.config.resample.model_dump(mode="json"),
            "epochs_run": run.manifest.get("epochs_run"),
            "best_epoch": run.manifest.get("best_epoch"),
            "validation_metrics": run.manifest.get("metrics"),
            "model": run.config.model.model_dump(mode="json"),
            "parameters": (run.manifest.get("model") or {}).get("parameters"),
        },
        "evaluation": _evaluation(run),
        "files": files,
        "parity": parity,
        "quantized": quantized,
        "notes": notes,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def card_markdown(card: dict[str, Any]) -> str:
    inp, out, tr, ev = card["input"], card["output"], card["training"], card["evaluation"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"{card['task']}. Exported by heart {card['heart_version']} on {card['created']}.",
        "",
        "## Classes",
        "",
        "| index | class | beats (MIT-BIH symbols) |",
        "|---|---|---|",
        *[
            f"| {i} | {c} | {card['class_descriptions'].get(c, '')} |"
            for i, c in enumerate(card["classes"])
        ],
        "",
        "## Input and output",
        "",
        f"- input `{inp['name']}`: float32 `[batch, {inp['length']}]`, one beat per row: "
        f"{inp['length']} samples at {inp['sampling_rate_hz']:g} Hz, {inp['normalisation']}; "
        f"lead {inp['lead']}",
        f"- output `{out['name']}`: float32 `[batch, {len(card['classes'])}]`, {out['meaning']}",
        "",
        "## Preprocessing (the recipe of `heart fetch`; `heart predict` applies it to records)",
        "",
        *[f"{i}. {step}" for i, step in enumerate(card["preprocessing"], start=1)],
        "",
        "## Training data",
        "",
        f"- dataset: `{tr['data_dir']}`, split `{tr['split']}` "
        f"(manifest SHA-256 `{tr['data_manifest_sha256']}`)",
        f"- training fold per class: {tr['train_counts']}; after resampling "
        f"({tr['resample'].get('strategy')}): {tr['resampled_counts']}",
        f"- validation per class: {tr['validation_counts']}",
        f"- {tr['epochs_run']} epochs, best at epoch {tr['best_epoch']}; "
        f"{tr['parameters']} parameters",
        "",
        "## Evaluation",
        "",
    ]
    if ev["status"] == "not evaluated":
        lines += [f"Not evaluated: {ev['note']}.", ""]
    else:
        lo, hi = ev.get("macro_f1_ci95") or [float("nan"), float("nan")]
        if ev["status"] == "stale":
            lines += [f"**Stale**: {ev['note']}.", ""]
        lines += [
            f"On {ev['data']}, {ev['n']} beats: accuracy {_fmt(ev['accuracy'])}, balanced "
            f"accuracy {_fmt(ev['balanced_accuracy'])}, macro-F1 {_fmt(ev['macro_f1'])} "
            f"(95% bootstrap CI {_fmt(lo)}-{_fmt(hi)}).",
            "",
            "| class | precision (+P) | recall (Se) | F1 | support |",
            "|---|---|---|---|---|",
            *[
                f"| {c} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | "
                f"{v['support']} |"
                for c, v in ev["per_class"].items()
            ],
            "",
        ]
    par = card["parity"]
    lines += [
        "## Files",
        "",
        f"Each file was reloaded and checked against the PyTorch model on {par['beats']:,} real "
        f"beats ({par['source']}): max |p - p_torch| <= {par['atol']:g} and the same class for "
        "every beat.",
        "",
        "| file | format | bytes | SHA-256 | max abs diff | same class |",
        "|---|---|---|---|---|---|",
    ]
    for f in card["files"]:
        p = f.get("parity") or f.get("agreement") or {}
        lines.append(
            f"| {f['file']} | {f['format']} | {f['bytes']:,} | `{f['sha256']}` | "
            f"{p.get('max_abs_diff', float('nan')):.2e} | {p.get('argmax_agreement', 0):.2%} |"
        )
    q = card.get("quantized")
    if q:
        lines += [
            "",
            "## Int8 (dynamic quantisation)",
            "",
            f"`{q['file']}` is not held to the parity tolerance. On {q['test_beats']:,} test "
            f"beats ({q['test_source']}): macro-F1 {q['macro_f1_int8']:.4f} (int8) vs "
            f"{q['macro_f1_float']:.4f} (float); the same class as the float model for "
            f"{q['agreement']:.2%} of the beats.",
        ]
    if card["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in card["notes"]]]
    lines += [
        "",
        "## Use",
        "",
        "```",
        "heart predict model.onnx path/to/record   # a WFDB record without extension",
        "heart predict model.onnx beats.parquet --out predictions.csv",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- export


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with _quiet():
        root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs through the root logger
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)


def _quantized_report(
    tmp: Path, x: np.ndarray, reference: np.ndarray, test: BeatSet, run: LoadedRun, source: str
) -> dict[str, Any]:
    from heartcli.evaluate import confusion_matrix as cm
    from heartcli.evaluate import macro_f1_from_confusion

    int8 = onnx_runner(tmp / FILENAMES["onnx-int8"])
    flt = onnx_runner(tmp / FILENAMES["onnx"])
    agreement = compare(reference, run_batches(int8, x))
    xt = np.ascontiguousarray(test.x, dtype=np.float32)
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


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Move the verified folder onto ``out`` (replacing it only with ``force``)."""
    old: Path | None = None
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
    quantize: bool = False,
    data: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export, verify and describe a run; see the module docstring."""
    import torch

    from heartcli.runs import load_run

    started = time.perf_counter()
    say = log or (lambda _msg: None)
    run = load_run(run_path)
    out_dir = Path(out) if out is not None else Path(run.path) / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: a file is in the way; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir} already exists; pass --force to replace it or choose --out")
    if quantize and "onnx" not in formats:
        raise UsageError("--quantize makes an int8 copy of the ONNX model; add --format onnx")

    x, source, test, test_source = parity_beats(
        run, config.parity_beats, Path(data) if data else None
    )
    module = _probability_module(run.model)
    reference = run_batches(torch_runner(module), x)
    example = torch.from_numpy(x[:2].copy())
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
        if quantize:
            say(f"quantising to {FILENAMES['onnx-int8']}")
            _quantize(tmp / FILENAMES["onnx"], tmp / FILENAMES["onnx-int8"])
            info["onnx-int8"] = {"exporter": "onnxruntime quantize_dynamic (QInt8)"}

        files: list[dict[str, Any]] = []
        for fmt in formats:
            say(f"checking {FILENAMES[fmt]} on {len(x):,} real beats")
            parity = check_parity(fmt, tmp / FILENAMES[fmt], x, reference, config.atol)
            files.append({"file": FILENAMES[fmt], "format": fmt, **info[fmt], "parity": parity})
        quantized = None
        if quantize:
            say("scoring the int8 model")
            quantized = _quantized_report(tmp, x, reference, test, run, test_source)
            files.append(
                {
                    "file": FILENAMES["onnx-int8"],
                    "format": "onnx-int8",
                    **info["onnx-int8"],
                    "agreement": quantized["agreement_on_parity_beats"],
                }
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
        card = build_card(run, files, parity_info, quantized, notes)
        write_json(tmp / CARD_JSON, card)
        write_text(tmp / CARD_MD, card_markdown(card))
        names = [f["file"] for f in files] + [CARD_JSON, CARD_MD]
        write_text(tmp / SUMS, "".join(f"{sha256_file(tmp / n)}  {n}\n" for n in names))
        _place(tmp, out_dir, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(Path(run.path), out_dir, files, card, time.perf_counter() - started, notes)
