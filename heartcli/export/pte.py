"""ExecuTorch programs (``.pte``) of `heart export --format pte`, and their runtime.

The optional extra ``heart[edge]`` (``executorch``) provides the exporter and the runtime;
without it ``--format pte`` is a UsageError (exit 2) naming what to install.

The program is the run's CNN followed by a softmax (``probability_module``), as its 4-D
twin (:mod:`heartcli.export.twin`: the same arithmetic on ops XNNPACK delegates), exported
with ``torch.export`` with a batch axis of 1 to ``MAX_BATCH`` beats, lowered with
``to_edge_transform_and_lower`` and the ``XnnpackPartitioner``, and planned for the
largest batch (``BatchBound``), its weights aligned to ``SEGMENT_ALIGNMENT`` bytes. The int8
program is the exported graph quantised before lowering (PT2E, :mod:`heartcli.export.int8`
hands ``export_pte`` its ``transform``).

Programs run in ExecuTorch's own Python runtime (``executorch.runtime``), which the parity
check, the latency figures and `heart predict` use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.errors import DataError, UsageError
from heartcli.export.twin import device_module

if TYPE_CHECKING:
    from torch import nn

    from heartcli.model.inference import Runner

MAX_BATCH = 1024  # the largest batch a program takes: the shared inference batch
SEGMENT_ALIGNMENT = 16  # bytes; ExecuTorch's default is 128
INSTALL = "pip install 'heart[edge]' (executorch==1.5.1, beside torch 2.13)"


def require_executorch() -> None:
    """A UsageError (exit 2) in one line when ExecuTorch is not installed."""
    try:
        found = importlib.util.find_spec("executorch") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"--format pte needs ExecuTorch, which is not installed: {INSTALL}")
    import logging

    from heartcli.export.formats import quiet

    # torchao (an ExecuTorch dependency) logs the optional CUDA kernels it cannot load, and
    # torch warns about one of its enums, at import: noise on a CPU machine
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with quiet():
            import executorch.exir
            import executorch.runtime  # noqa: F401
            import torchao.quantization.pt2e  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"--format pte needs ExecuTorch, which does not import ({exc}): {INSTALL}"
        ) from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dynamic(count: int) -> tuple[dict[int, Any], ...]:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return tuple({0: batch} for _ in range(count))


def export_pte(
    module: nn.Module,
    example: tuple[Any, ...],
    path: Path,
    transform: Callable[[Any], Any] | None = None,
    program: str = "float32, XNNPACK",
) -> dict[str, Any]:
    """Write the ExecuTorch program of ``module``.

    ``example`` holds one tensor per input; ``transform`` rewrites the exported graph
    module before it is lowered (int8's PT2E quantisation), and ``program`` says what the
    program computes in.
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    from heartcli.export.formats import quiet

    net = device_module(module)
    shapes = _dynamic(len(example))
    with quiet():
        exported = torch.export.export(net, example, dynamic_shapes=shapes)
        if transform is not None:
            exported = torch.export.export(
                transform(exported.module()), example, dynamic_shapes=shapes
            )
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        # 16-byte alignment of the weight segments instead of 128: about 4 kB less for the
        # tiny model (XNNPACK repacks the weights when it loads them)
        config = ExecutorchBackendConfig(
            sym_shape_eval_pass=_batch_bound_pass(), segment_alignment=SEGMENT_ALIGNMENT
        )
        buffer = edge.to_executorch(config).buffer
    path.write_bytes(buffer)
    delegated = _delegated_share(edge)
    return {
        "exporter": "torch.export + executorch.exir.to_edge_transform_and_lower"
        " (XnnpackPartitioner)",
        "load": "executorch.runtime.Runtime.get().load_program",
        "program": program,
        "max_batch": MAX_BATCH,
        "delegated_ops": delegated,
    }


def _batch_bound_pass() -> Any:
    """Memory planning for the largest batch: every tensor shape at batch = MAX_BATCH.

    The only symbol of a heart program is the batch axis; ExecuTorch's own passes plan a
    shape whose symbol lost its range in lowering by a trace hint (15 beats here), so a
    bigger batch fails at run time. This pass bounds each symbol by 1..MAX_BATCH instead.
    """
    import torch
    from executorch.exir.tensor import TensorSpec
    from torch.fx.passes.infra.pass_base import PassBase, PassResult
    from torch.utils import _pytree as pytree
    from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

    def bound(value: Any) -> int:
        if isinstance(value, int):
            return value
        expr = value.node.expr
        ranges = {sym: ValueRanges(1, MAX_BATCH) for sym in expr.free_symbols}
        return int(bound_sympy(expr, ranges).upper)

    class BatchBound(PassBase):
        def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
            for sub in graph_module.modules():
                if not isinstance(sub, torch.fx.GraphModule):
                    continue
                for node in sub.graph.nodes:
                    for spec in pytree.tree_flatten(node.meta.get("spec", []))[0]:
                        if isinstance(spec, TensorSpec):
                            spec.shape = [bound(d) for d in spec.shape]
                            spec.stride = [bound(d) for d in spec.stride]
            return PassResult(graph_module, True)

    return BatchBound()


def _delegated_share(edge: Any) -> str:
    """How the program's nodes split between XNNPACK and the portable kernels, in words."""
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    names = [getattr(n.target, "__name__", str(n.target)) for n in calls]
    delegates = sum("executorch_call_delegate" in name for name in names)
    skip = ("executorch_call_delegate", "getitem", "alloc", "view", "sym_size")
    others = sorted({name.split(".")[0] for name in names if not name.startswith(skip)})
    return f"{delegates} XNNPACK partition(s); outside them: {', '.join(others) or 'nothing'}"


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Silence what ExecuTorch's C++ side writes to stderr (thread pool and CPU info logs)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def set_pte_threads(threads: int) -> None:
    """The size of the thread pool ExecuTorch's XNNPACK kernels use in this process."""
    from executorch.extension.pybindings import portable_lib

    with native_quiet():
        portable_lib._unsafe_reset_threadpool(threads)


PROBE_TIMEOUT_S = 60.0


def check_pte_file(path: Path) -> None:
    """A file that cannot be a program is one DataError line before the runtime sees it:
    an ExecuTorch program carries the identifier ``ET`` and two characters at byte 4."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isalnum():
        raise DataError(
            f"{path}: not an ExecuTorch program (no ET identifier at byte 4: truncated, "
            "damaged or another file); export it again"
        )


def probe_pte(path: Path, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Load the program once in a forked copy of this process before loading it here.

    ExecuTorch's loader can abort the whole process on a damaged program (it logs the
    file's bytes through Python, and bytes that are not UTF-8 end in ``std::terminate``);
    in the copy that kills only the copy, and heart says so in one line. The fork shares
    the runtime already imported (no second start-up), and it is bounded by ``timeout``.
    """
    if not hasattr(os, "fork"):  # pragma: no cover (not POSIX)
        return
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _probed:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the copy: load, answer by exit code, never return
        code = 3
        try:
            sink = os.open(os.devnull, os.O_WRONLY)
            os.dup2(sink, 1)
            os.dup2(sink, 2)
            from executorch.runtime import Runtime

            program = Runtime.get().load_program(Path(path))
            code = 0 if program.load_method("forward") is not None else 4
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    _wait_probe(path, pid, timeout)
    _probed.add(key)


_probed: set[tuple[str, int, int]] = set()  # programs a probe loaded (path, size, mtime)


def _wait_probe(path: Path, pid: int, timeout: float) -> None:
    import signal
    import time

    deadline = time.monotonic() + timeout
    done, status = 0, 0
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                raise DataError(
                    f"{path}: loading the program took over {timeout:g} s; export it again"
                )
            time.sleep(0.01)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return
    how = (
        f"the loader aborted ({signal.Signals(os.WTERMSIG(status)).name})"
        if os.WIFSIGNALED(status)
        else "the runtime refused it"
    )
    raise DataError(
        f"{path}: not a loadable ExecuTorch program ({how}: truncated or damaged); export it again"
    )


def pte_method(path: Path) -> Any:
    """The ``forward`` method of the program at ``path``; DataError if it cannot load (a
    damaged program that would abort the loader is found in a forked copy first)."""
    require_executorch()
    from executorch.runtime import Runtime

    from heartcli.export.formats import quiet

    check_pte_file(path)
    probe_pte(path)
    try:
        with quiet(), native_quiet():
            program = Runtime.get().load_program(Path(path))
            method = program.load_method("forward")
    except Exception:  # the runtime raises RuntimeError/ValueError for damaged programs
        raise DataError(
            f"{path}: not a loadable ExecuTorch program (truncated or damaged); export it again"
        ) from None
    if method is None:
        raise DataError(f"{path}: the program has no forward method; export it again")
    return method


def pte_runner(path: Path) -> Runner:
    """A .pte program as a runner of the shared inference module: numpy in, numpy out."""
    import torch

    method = pte_method(path)

    def run(*arrays: np.ndarray) -> np.ndarray:
        outputs = method.execute([torch.from_numpy(a) for a in arrays])
        return np.asarray(outputs[0].numpy())

    vars(run)["heart_source"] = str(path)  # named by batched's finite check
    return run


def pte_signature(path: Path) -> list[tuple[int, ...]]:
    """The shapes of the program's inputs as planned (the batch axis at its largest)."""
    method = pte_method(path)
    meta = method.metadata
    return [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
