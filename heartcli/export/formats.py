"""The exporters of `heart export`: ONNX, torch.export (.pt2), TorchScript, int8 ONNX.

Each writes the run's CNN followed by a softmax (``probability_module``): beats float32
``[batch, length]`` (any batch size) -> probabilities ``[batch, n_classes]``; a rhythm
model (``[model] rhythm``) takes a second input, ``rhythm`` float32 ``[batch, 9]`` (the
columns of ``RHYTHM_FEATURES``, standardised inside the model). ONNX goes
through the torch.export-based exporter (``dynamo=True``, onnxscript) at ``[export]
opset``; if that exporter fails, the TorchScript-based one is used and the card says so.
Its 1-D convolutions are then rewritten as 2-D ones (``conv1d_as_conv2d``), which ONNX
Runtime runs faster on CPU. ``quantize_onnx`` makes the dynamic int8 copy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.errors import HeartError

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("onnx", "pt2", "torchscript")
EDGE_FORMATS = ("pte",)  # ExecuTorch: the optional extra heart[edge]; not part of "all"
FILENAMES = {
    "onnx": "model.onnx",
    "pt2": "model.pt2",
    "torchscript": "model.torchscript.pt",
    "pte": "model.pte",
    "onnx-int8": "model.int8.onnx",
    "pte-int8": "model.int8.pte",
}
INPUT_NAME = "beats"
RHYTHM_INPUT = "rhythm"
OUTPUT_NAME = "probabilities"


def _dynamic(names: list[str]) -> dict[str, Any]:
    import torch

    batch = torch.export.Dim("batch", min=1)
    return {name: {0: batch} for name in names}


def probability_module(model: nn.Module) -> nn.Module:
    import torch
    from torch import nn

    from heartcli.model.inference import uses_rhythm

    class Probabilities(nn.Module):
        """The run's CNN followed by a softmax: beats -> class probabilities."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, beats: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(beats), dim=1)

    class RhythmProbabilities(Probabilities):
        """A rhythm model followed by a softmax: beats and rhythm -> class probabilities."""

        def forward(self, beats: torch.Tensor, rhythm: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return torch.softmax(self.net(beats, rhythm), dim=1)

    kind = RhythmProbabilities if uses_rhythm(model) else Probabilities
    return kind(model).eval()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def export_onnx(
    module: nn.Module, example: tuple[Any, ...], path: Path, opset: int
) -> dict[str, Any]:
    """ONNX with a dynamic batch axis; the dynamo exporter, else the TorchScript-based one.

    ``example`` holds one tensor per input (beats, and rhythm for a rhythm model).
    """
    import onnx
    import torch

    names = [INPUT_NAME, RHYTHM_INPUT][: len(example)]

    def to_onnx(**how: Any) -> None:
        with quiet():
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=names,
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                **how,
            )

    exporter = "torch.onnx.export(dynamo=True)"
    try:
        to_onnx(dynamic_shapes=_dynamic(names), dynamo=True, external_data=False, verbose=False)
    except Exception as first:  # the new exporter raises many types; fall back once
        exporter = (
            f"torch.onnx.export(dynamo=False) (dynamo exporter failed: {type(first).__name__})"
        )
        path.unlink(missing_ok=True)
        try:
            to_onnx(dynamic_axes={n: {0: "batch"} for n in [*names, OUTPUT_NAME]}, dynamo=False)
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


def save_through_python(save: Callable[[Any], None], path: Path) -> None:
    """Serialise into memory, then write with Python: torch's own C++ file writers abort
    the whole process on a full disk, where a Python write raises an OSError (one line)."""
    buffer = io.BytesIO()
    save(buffer)
    path.write_bytes(buffer.getvalue())


def export_pt2(module: nn.Module, example: tuple[Any, ...], path: Path) -> dict[str, Any]:
    import torch

    names = [INPUT_NAME, RHYTHM_INPUT][: len(example)]
    with quiet():
        program = torch.export.export(module, example, dynamic_shapes=_dynamic(names))
        save_through_python(lambda f: torch.export.save(program, f), path)
    return {"exporter": "torch.export.export + torch.export.save", "load": "torch.export.load"}


def export_torchscript(module: nn.Module, example: tuple[Any, ...], path: Path) -> dict[str, Any]:
    import torch

    with quiet():
        traced = torch.jit.trace(module, example, check_trace=False)
        save_through_python(lambda f: torch.jit.save(traced, f), path)
    return {
        "exporter": "torch.jit.trace",
        "load": "torch.jit.load",
        "note": f"TorchScript is deprecated in torch {torch.__version__.split('+')[0]}; "
        "prefer model.pt2 or model.onnx",
    }


def quantize_onnx(src: Path, dst: Path) -> None:
    """A dynamic int8 copy of the ONNX model at ``src`` (ONNX Runtime's quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with quiet():
        root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs through the root logger
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
