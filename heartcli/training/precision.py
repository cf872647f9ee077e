"""Where and in what arithmetic a run trains: the device, bf16 autocast or fp32.

bf16 autocast runs the convolutions and linear layers in bfloat16; the master weights, the
optimizer state, the loss, BatchNorm's running statistics and every validation figure stay
fp32. ``auto`` picks bf16 only where the hardware does bf16 natively: a CUDA GPU that
supports it, or a CPU with AVX512-BF16 or AMX (on other CPUs oneDNN emulates bf16, which is
slower than fp32).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from heartcli.errors import UsageError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError('train.device: "cuda" is not available here; use "auto" or "cpu"')
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError('train.device: "mps" is not available here; use "auto" or "cpu"')
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (capability checks, not a name list)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(
            torch.backends.mkldnn.is_available()
            and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        )
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``[train] precision`` on ``device``."""
    native = native_bf16(device)
    if name == "auto":
        return "bf16" if native else "fp32"
    if name == "bf16" and not native:
        what = "this CPU (no AVX512-BF16 or AMX)" if device.type == "cpu" else f"{device}"
        raise UsageError(
            f'train.precision: "bf16" is not supported natively by {what}; use "auto" or "fp32"'
        )
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's arithmetic: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
