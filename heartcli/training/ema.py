"""``[train] ema``: an exponential moving average of the weights (Polyak averaging).

After every optimizer step the average moves toward the model: ``avg += (1 - d) * (w - avg)``
with ``d = min(ema, (1 + t) / (10 + t))`` at step ``t`` (the warm-up of TensorFlow's
ExponentialMovingAverage, so the first steps' random weights do not linger). Floating-point
buffers (BatchNorm's running statistics) are averaged the same way; integer ones copied.
Validation, the best weights (``model.safetensors``) and so every later command use the
average; the optimizer keeps stepping the raw weights. Polyak & Juditsky (1992) averaged
iterates; Izmailov et al. (2018, SWA) and Tarvainen & Valpola (2017, mean teacher) showed
weight averages generalising better than the last iterate in deep networks.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The moving average of a model's weights, as a model of its own (eval only)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        avg = self.model.state_dict()
        for name, value in model.state_dict().items():
            target = avg[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach(), 1.0 - d)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.model.load_state_dict(state["model"])
