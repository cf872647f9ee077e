"""Batched inference in one place: PyTorch models and ONNX Runtime sessions.

`heart evaluate`, `heart export` (reference and parity), `heart predict` and the training
loop's validation all run models through these helpers, with one batch size.

A model takes a sequence of **inputs**, each an array whose first axis is the beat: today
one, the beats ``[n, length]``. A second input (the rhythm features ``[n, 9]``) adds an
array to the sequence; every helper slices all inputs in step and hands them to the model
positionally (PyTorch) or by the session's input names, in order (ONNX). torch is
imported only by the PyTorch helpers, so ONNX inference runs without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.config import RHYTHM_FEATURES
from heartcli.errors import DataError, NonFiniteOutput, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

BATCH = 1024  # beats per forward pass everywhere (CPU and ONNX Runtime alike)

Runner = Callable[..., np.ndarray]  # one batch of every input -> outputs [batch, k]


def uses_rhythm(model: Any) -> bool:
    """Whether a PyTorch model takes the rhythm features as its second input."""
    return bool(getattr(model, "uses_rhythm", False))


def model_inputs(
    x: np.ndarray, rhythm: np.ndarray | None, needs_rhythm: bool, where: str
) -> list[np.ndarray]:
    """The inputs of a model: ``[beats]``, or ``[beats, rhythm]`` for a rhythm model.

    A rhythm model given beats without rhythm columns is a UsageError (exit 2) naming the
    columns and the command that builds them.
    """
    if not needs_rhythm:
        return [x]
    if rhythm is None:
        raise UsageError(missing_rhythm(where))
    return [x, rhythm]


def missing_rhythm(where: str) -> str:
    """The one line for rhythm features that are not there."""
    return (
        f"{where}: the model takes rhythm features, but the data has no columns "
        f"{', '.join(RHYTHM_FEATURES)}; build the dataset from the records with `heart fetch` "
        "(imported beat files have no beat timing), or give a WFDB record"
    )


def batched(run: Runner, inputs: Sequence[np.ndarray], batch: int = BATCH) -> np.ndarray:
    """``run`` over all beats in batches of ``batch``, every input sliced in step.

    Inputs are made C-contiguous float32; an empty input gives an empty ``[0, 0]`` result.
    The one finite check of every runtime (PyTorch, ONNX Runtime, ExecuTorch): a batch
    holding NaN or inf is a :class:`NonFiniteOutput` naming the model (``run.heart_source``),
    so nothing is scored from it.
    """
    n = len(inputs[0])
    if any(len(a) != n for a in inputs):
        raise ValueError("every input needs one row per beat")
    name = str(getattr(run, "heart_source", None) or "the model")
    parts = [
        check_finite(
            np.asarray(
                run(*[np.ascontiguousarray(a[i : i + batch], dtype=np.float32) for a in inputs])
            ),
            name,
        )
        for i in range(0, n, batch)
    ]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts)


def check_finite(out: np.ndarray, model: str) -> np.ndarray:
    """``out`` if every value is finite; a NaN or inf output is one line naming the model."""
    if out.size and not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).reshape(len(out), -1).any(axis=1).sum())
        raise NonFiniteOutput(
            f"{model}: the model outputs NaN or inf for {bad:,} of {len(out):,} beats (its "
            "weights are broken, e.g. a diverged run); retrain it, nothing was scored"
        )
    return out


def model_name(model: Any) -> str:
    """What to call a model in a message: its run folder (``load_run`` records it)."""
    return str(getattr(model, "heart_source", None) or "the model")


def torch_runner(model: nn.Module, *, softmax: bool = True) -> Runner:
    """A PyTorch module as a runner: numpy inputs -> probabilities (or logits), no grad."""
    import torch

    def run(*arrays: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(*[torch.from_numpy(a) for a in arrays]).float()
            if softmax:
                out = torch.softmax(out, dim=1)
            return np.asarray(out.numpy())

    vars(run)["heart_source"] = model_name(model)  # named by batched's finite check
    return run


def torch_proba(model: nn.Module, inputs: Sequence[np.ndarray], batch: int = BATCH) -> np.ndarray:
    """Softmax probabilities of a PyTorch model on CPU, in eval mode, in batches."""
    model.eval()
    return batched(torch_runner(model), inputs, batch)


def torch_logits(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    batch: int = BATCH,
    context: contextlib.AbstractContextManager[Any] | None = None,
) -> torch.Tensor:
    """float32 logits of tensors already on the model's device (training's validation).

    ``context`` wraps every forward pass (e.g. autocast on CUDA).
    """
    import torch

    model.eval()
    n = len(inputs[0])
    parts = []
    with torch.inference_mode(), context or contextlib.nullcontext():
        for i in range(0, n, batch):
            parts.append(model(*[t[i : i + batch] for t in inputs]).float())
    return torch.cat(parts)


def onnx_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session of ``path``; DataError (one line) if it cannot load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ONNX Runtime's threads spin while they wait, as OpenMP's do; beside another busy
    # program that costs what it costs torch (heartcli.threads), so they wait passively.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise DataError(
            f"{path}: not a loadable ONNX model (truncated or damaged); export it again"
        ) from None


def onnx_runner(session: Any) -> Runner:
    """An ONNX Runtime session as a runner: inputs in the order of the session's inputs."""
    names = [i.name for i in session.get_inputs()]
    source = str(getattr(session, "_model_path", None) or "the ONNX model")

    def run(*arrays: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, dict(zip(names, arrays, strict=True)))[0])

    vars(run)["heart_source"] = source  # named by batched's finite check
    return run
