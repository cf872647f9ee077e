"""What an exported model costs on a device: the "costs" block of every `heart export` card
(``measure_costs``) and its Costs section in MODEL_CARD.md (``costs_markdown``).

For the model: its **parameters**, its **multiply-adds per beat** (torch's
``FlopCounterMode`` on one beat: the convolutions, matrix products and linear layers, FLOPs
/ 2; element-wise work such as batch norm, ReLU and softmax is not counted), and its **peak
activation memory** (an estimate: the largest, over the leaf layers of one forward pass at
batch 1, of the bytes of the layer's input plus its output, plus the input of a residual
block held for its shortcut; float32 is 4 bytes a value, an int8 program 1).

For each file: its size in bytes and its **latency per beat** in its own runtime (ONNX
Runtime for .onnx, ExecuTorch for .pte, torch for .pt2 and TorchScript) at batch 1 and at
batch 256 on real beats, with ``[export] latency_threads`` threads: each measurement is the
median over ``LATENCY_REPEATS`` repeats of the time of enough calls to fill about
``LATENCY_SECONDS`` seconds, after a warm-up.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from heartcli.progress import Progress

LATENCY_REPEATS = 5
LATENCY_SECONDS = 0.05  # per repeat; the median of the repeats is reported
LATENCY_BATCHES = (1, 256)
RUNTIMES = {
    "onnx": "onnxruntime",
    "onnx-int8": "onnxruntime",
    "pte": "executorch",
    "pte-int8": "executorch",
    "pt2": "torch",
    "torchscript": "torch",
}


def measure_costs(
    tmp: Path,
    files: list[dict[str, Any]],
    model: nn.Module,
    inputs: list[np.ndarray],
    threads: int,
    progress: Progress,
) -> dict[str, Any]:
    """The model's costs; each file's latency goes into its entry of ``files``."""
    figures = model_costs(model, inputs)
    for entry in files:
        progress.stage(f"timing {entry['file']} ({threads} thread(s))")
        entry["latency"] = latency(entry["format"], tmp / entry["file"], inputs, threads)
    return figures


def model_costs(model: nn.Module, inputs: list[np.ndarray]) -> dict[str, Any]:
    """Parameters, multiply-adds per beat and the peak activation estimate (float32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    one = tuple(torch.from_numpy(np.ascontiguousarray(a[:1], dtype=np.float32)) for a in inputs)
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*one)
    peak = _peak_activation_values(model, one)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs_per_beat": int(counter.get_total_flops() // 2),
        "macs_method": "torch.utils.flop_counter.FlopCounterMode on one beat, FLOPs / 2 "
        "(convolutions, matrix products, linear layers)",
        "peak_activation_values": peak,
        "peak_activation_bytes_float32": peak * 4,
        "peak_activation_bytes_int8": peak,
        "peak_activation_method": "estimate: the largest, over the leaf layers of one forward "
        "pass at batch 1, of the values of the layer's input plus its output (plus a residual "
        "block's input, held for its shortcut); x4 bytes in float32, x1 in int8",
    }


def _peak_activation_values(model: nn.Module, one: tuple[Any, ...]) -> int:
    import torch

    from heartcli.model.network import ResidualBlock

    held = [0]  # values held for the shortcut of the residual block being run
    peak = [0]
    hooks = []

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel()
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 0

    def leaf(_m: Any, args: Any, output: Any) -> None:
        peak[0] = max(peak[0], size(args) + size(output) + held[0])

    def enter(_m: Any, args: Any) -> None:
        held[0] += size(args)

    def leave(_m: Any, args: Any, _output: Any) -> None:
        held[0] -= size(args)

    for module in model.modules():
        if isinstance(module, ResidualBlock):
            hooks.append(module.register_forward_pre_hook(enter))
            hooks.append(module.register_forward_hook(leave))
        elif not list(module.children()):
            hooks.append(module.register_forward_hook(leaf))
    try:
        with torch.inference_mode():
            model(*one)
    finally:
        for hook in hooks:
            hook.remove()
    return peak[0]


def batch_of(inputs: list[np.ndarray], size: int) -> list[np.ndarray]:
    """``size`` real beats (repeated when there are fewer), each input in step."""
    n = len(inputs[0])
    index = np.arange(size) % max(n, 1)
    return [np.ascontiguousarray(a[index], dtype=np.float32) for a in inputs]


def time_per_beat(run: Callable[..., Any], batch: list[np.ndarray]) -> float:
    """Median seconds per beat of ``run(*batch)`` over LATENCY_REPEATS timed repeats."""
    beats = len(batch[0])
    start = time.perf_counter()
    run(*batch)  # warm-up (first-call allocation, kernel selection)
    first = max(time.perf_counter() - start, 1e-6)
    calls = max(1, min(10_000, int(LATENCY_SECONDS / first)))
    samples = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            run(*batch)
        samples.append((time.perf_counter() - start) / (calls * beats))
    return statistics.median(samples)


def latency(fmt: str, path: Path, inputs: list[np.ndarray], threads: int) -> dict[str, Any] | None:
    """Seconds per beat of the file at batch 1 and 256 in its runtime, or None if unknown."""
    runtime = RUNTIMES.get(fmt)
    if runtime is None:
        return None
    runner = _runner(runtime, fmt, path, threads)
    try:
        per_beat = {
            f"batch_{b}_us_per_beat": time_per_beat(runner, batch_of(inputs, b)) * 1e6
            for b in LATENCY_BATCHES
        }
    finally:
        _restore(runtime)
    return {
        "runtime": runtime,
        "threads": threads,
        **{k: round(v, 2) for k, v in per_beat.items()},
        "method": f"median of {LATENCY_REPEATS} timed repeats after a warm-up, real beats, "
        f"{threads} thread(s), on {os.cpu_count()} CPU core(s) of this machine",
    }


_saved_threads: list[int] = []


def _runner(runtime: str, fmt: str, path: Path, threads: int) -> Callable[..., Any]:
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *arrays: session.run(None, dict(zip(names, arrays, strict=True)))
    import torch

    _saved_threads.append(torch.get_num_threads())
    torch.set_num_threads(threads)
    if runtime == "executorch":
        from heartcli.export.pte import pte_method, set_pte_threads

        set_pte_threads(threads)
        method = pte_method(path)
        return lambda *arrays: method.execute([torch.from_numpy(a) for a in arrays])
    from heartcli.export.parity import reload_runner

    return reload_runner(fmt, path)


def _restore(runtime: str) -> None:
    if runtime == "onnxruntime" or not _saved_threads:
        return
    import torch

    torch.set_num_threads(_saved_threads.pop())


def costs_markdown(card: dict[str, Any]) -> list[str]:
    """The card's Costs section: parameters, multiply-adds, peak activation estimate; size
    and latency per file."""
    costs = card.get("costs")
    if not costs:
        return []
    lines = [
        "",
        "## Costs",
        "",
        f"- parameters: {costs['parameters']:,}",
        f"- multiply-adds per beat: {costs['macs_per_beat']:,} ({costs['macs_method']})",
        f"- peak activation memory: ~{costs['peak_activation_bytes_float32']:,} bytes in "
        f"float32, ~{costs['peak_activation_bytes_int8']:,} in int8 "
        f"({costs['peak_activation_method']})",
        "",
        "| file | bytes | runtime | threads | us per beat, batch 1 | us per beat, batch 256 |",
        "|---|---|---|---|---|---|",
    ]
    method = ""
    for f in card["files"]:
        lat = f.get("latency") or {}
        method = lat.get("method", method)
        lines.append(
            f"| {f['file']} | {f['bytes']:,} | {lat.get('runtime', '-')} | "
            f"{lat.get('threads', '-')} | {lat.get('batch_1_us_per_beat', '-')} | "
            f"{lat.get('batch_256_us_per_beat', '-')} |"
        )
    if method:
        lines += ["", f"Latency: {method}."]
    return lines
