"""The exporters of `heart export`: ONNX, torch.export (.pt2), TorchScript.

Each writes the run's CNN followed by a softmax (``probability_module``): beats float32
``[batch, length]`` (any batch size) -> probabilities ``[batch, n_classes]``; a rhythm
model (``[model] rhythm``) takes a second input, ``rhythm`` float32 ``[batch, 9]`` (the
columns of ``RHYTHM_FEATURES``, standardised inside the model). ONNX goes
through the torch.export-based exporter (``dynamo=True``, onnxscript) at ``[export]
opset``; if that exporter fails, the TorchScript-based one is used and the card says so.
The ONNX graph is the CNN's 4-D twin (:mod:`heartcli.export.twin`: its 1-D layers as 2-D
ones with a 1 x k kernel, which ONNX Runtime runs faster on CPU; the parity check covers
it). The int8 files are :mod:`heartcli.export.int8`'s; ``compact_onnx`` slims the static
one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartcli.errors import HeartError, UsageError
from heartcli.export.twin import device_module

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


def check_opset(opset: int) -> None:
    """``[export] opset`` is one the installed ONNX knows (else the exporter would quietly
    write another); refused before any export work."""
    import onnx

    newest = int(onnx.defs.onnx_opset_version())
    if opset > newest:
        raise UsageError(
            f"export.opset = {opset}: the installed onnx knows opsets up to {newest}; "
            f"use 7 to {newest} (18, the default, is what ONNX Runtime runs best)"
        )


def export_onnx(
    module: nn.Module, example: tuple[Any, ...], path: Path, opset: int
) -> dict[str, Any]:
    """ONNX with a dynamic batch axis; the dynamo exporter, else the TorchScript-based one.

    ``example`` holds one tensor per input (beats, and rhythm for a rhythm model).
    """
    import onnx
    import torch

    names = [INPUT_NAME, RHYTHM_INPUT][: len(example)]
    twin = device_module(module)

    def to_onnx(**how: Any) -> None:
        with quiet():
            torch.onnx.export(
                twin,
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
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    written = opsets.get("ai.onnx", opset)
    if written != opset:  # the exporter chose another opset than the one asked for
        raise UsageError(
            f"export.opset = {opset}: {exporter} wrote opset {written} instead; set "
            f"export.opset = {written} (or another opset it writes)"
        )
    return {
        "exporter": exporter,
        "opset": opsets.get("ai.onnx", opset),
        "graph": "the CNN's 4-D twin: its 1-D convolutions, batch norms and poolings as 2-D "
        "ones with a 1 x k kernel (ONNX Runtime's 2-D kernels are faster on CPU; the parity "
        "check covers it)",
    }


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
