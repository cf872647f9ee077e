"""The 4-D twin of a heart CNN, which the ONNX and ExecuTorch exports write.

The conv features run on a ``[batch, channels, 1, length]`` view: every 1-D conv, batch
norm and pooling becomes its 2-D twin with a ``1 x k`` kernel (the same weights), the
squeeze-excite gate 1 x 1 convs on a global average, and the adaptive average pool a 2-D
conv with ``1 x length`` filters. One unsqueeze in and one flatten out, nothing between:

- ExecuTorch's XNNPACK delegate runs the features and the head as 2 partitions (7 when
  the squeeze-excite gates were linear layers on a flattened average, 4 reshapes between
  them), which makes the tiny model's int8 program 11% smaller and its batch-1 latency lower;
- ONNX Runtime runs 2-D convolutions through its blocked NCHWc kernels, faster than its
  1-D path, with no Squeeze/Unsqueeze pair around each layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def device_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every heart CNN in it (one, or an ensemble's members) on
    4-D ops: the same arithmetic, weights and outputs (the exports' parity checks hold it)."""
    from heartcli.model.network import HeartCNN

    copied = copy.deepcopy(module).eval()
    for net in [m for m in copied.modules() if isinstance(m, HeartCNN)]:
        _twin_in_place(net)
    return copied.eval()


def _twin_in_place(net: nn.Module) -> None:
    """Swap the layers of one CNN's features and pool for their 4-D twins."""
    from torch import nn

    to_4d, from_4d, twin_of = _twins()
    for name, child in list(net.named_modules()):
        if not name.startswith(("features", "pool")):
            continue
        twin = twin_of(child)
        if twin is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_name), attr, twin)
    features: nn.Module = net.features  # type: ignore[assignment]
    net.features = nn.Sequential(to_4d(), *features.children())
    attention = getattr(net, "attention", None)
    if attention is not None and not isinstance(attention, nn.Identity):
        # self-attention works on [b, c, l]: the 4-D view is taken off around it
        net.attention = nn.Sequential(from_4d(), attention, to_4d())


def _twins() -> tuple[type[nn.Module], type[nn.Module], Callable[[nn.Module], nn.Module | None]]:
    """The modules that turn a tensor 4-D and back, and the 4-D twin of a layer (None: kept)."""
    from torch import nn

    from heartcli.model.network import AveragePool, SqueezeExcite

    to_4d, from_4d, global_squeeze_excite, conv_average_pool = _modules_4d()

    def twin_of(child: nn.Module) -> nn.Module | None:
        if isinstance(child, nn.Conv1d):
            return _conv2d(child)
        if isinstance(child, nn.BatchNorm1d):
            twin = nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
            twin.load_state_dict(child.state_dict())
            return twin
        if isinstance(child, nn.MaxPool1d):
            return nn.MaxPool2d((1, 2), (1, 2))
        if isinstance(child, nn.AvgPool1d):
            return nn.AvgPool2d((1, 2), (1, 2))
        if isinstance(child, SqueezeExcite):
            return global_squeeze_excite(child.gate)
        if isinstance(child, AveragePool):
            return conv_average_pool(child.weight)
        return None

    return to_4d, from_4d, twin_of


def _conv2d(c: nn.Conv1d) -> nn.Conv2d:
    """The ``1 x k`` 2-D twin of a 1-D conv, with its weights."""
    from torch import nn

    twin = nn.Conv2d(
        c.in_channels,
        c.out_channels,
        (1, c.kernel_size[0]),
        stride=(1, c.stride[0]),
        padding=c.padding if isinstance(c.padding, str) else (0, c.padding[0]),
        dilation=(1, c.dilation[0]),
        groups=c.groups,
        bias=c.bias is not None,
    )
    return _with_weights(twin, c.weight.unsqueeze(2), c.bias)


def _modules_4d() -> tuple[type[nn.Module], type[nn.Module], Any, Any]:
    """The modules with no 1-D twin in torch: the unsqueeze in (and the squeeze out, around
    self-attention), the squeeze-excite on a 4-D view, the adaptive average pool as a conv
    (defined here: torch is imported lazily)."""
    import torch
    from torch import nn

    class To4d(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.unsqueeze(2)  # [b, c, l] -> [b, c, 1, l]

    class From4d(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.squeeze(2)  # [b, c, 1, l] -> [b, c, l]

    class GlobalSqueezeExcite(nn.Module):
        """The gate's linear layers as 1 x 1 convs on the [b, c, 1, 1] average: no reshape
        between the features' layers, so XNNPACK keeps them in one partition."""

        def __init__(self, gate: nn.Module):
            super().__init__()
            self.gate = nn.Sequential(*(_as_conv1x1(layer) for layer in gate.children()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gate(x.mean(dim=(2, 3), keepdim=True))

    class ConvAveragePool(nn.Module):
        """AveragePool of a [b, c, 1, l] view: P filters of 1 x l over [b, 1, c, l]."""

        def __init__(self, weight: torch.Tensor):
            super().__init__()
            length, out = weight.shape
            self.conv = nn.Conv2d(1, out, (1, length), bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(weight.t().reshape(out, 1, 1, length))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # [b, P, c, 1] -> [b, c, P, 1]: the network's flatten(1) reads it as [b, c, P]
            return self.conv(x.transpose(1, 2)).transpose(1, 2)

    return To4d, From4d, GlobalSqueezeExcite, ConvAveragePool


def _as_conv1x1(layer: nn.Module) -> nn.Module:
    """A linear layer as the 1 x 1 conv with its weights; any other layer as it is."""
    from torch import nn

    if not isinstance(layer, nn.Linear):
        return layer
    conv = nn.Conv2d(layer.in_features, layer.out_features, 1, bias=layer.bias is not None)
    return _with_weights(conv, layer.weight[:, :, None, None], layer.bias)


def _with_weights(twin: nn.Conv2d, weight: Any, bias: Any) -> nn.Conv2d:
    """``twin`` holding the original layer's weights (reshaped for it) and bias."""
    import torch

    with torch.no_grad():
        twin.weight.copy_(weight)
        if bias is not None and twin.bias is not None:
            twin.bias.copy_(bias)
    return twin
