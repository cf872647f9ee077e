"""The configurable 1D CNN: the seed architecture by default, every search knob a config key.

Layer ``i`` of ``[model]`` (0-based, ``n = conv_layers``) is a Conv+BN+ReLU, or a residual
block when ``residual`` is on and ``2 <= i <= n - 2`` ("the layers between the first two and
the last"); squeeze-excite follows every layer but the first; pooling (kernel 2, stride 2)
comes last. Optional multi-head temporal self-attention runs over the final conv features,
then an adaptive average pool, the fully connected layers and the output logits.

With ``rhythm = true`` the model takes a second input, the six rhythm columns of every beat
(``RHYTHM_FEATURES``, float32 ``[batch, 6]``): :class:`RhythmInput` standardises them with
the training fold's mean and standard deviation (buffers of the model state, so every run,
export and prediction carries them), clips them to +-``RHYTHM_CLIP`` standard deviations,
keeps ``rhythm_columns`` and concatenates them to the pooled conv features before the fully
connected layers.

The forward pass has no data-dependent control flow, so the model exports to ONNX and
``torch.export``. The adaptive pool is a fixed averaging matrix (exactly
``AdaptiveAvgPool1d``) because ONNX has no adaptive pool for lengths that do not divide.
"""

from __future__ import annotations

import torch
from torch import nn

from heartcli.config import RHYTHM_FEATURES, ModelConfig
from heartcli.errors import UsageError


def output_length(cfg: ModelConfig, input_length: int) -> int:
    """Length of the conv features for ``input_length`` samples; rejects a shrink to 0."""
    length = input_length
    for kind in cfg.pooling:
        if kind != "none":
            length //= 2
    if length < 1:
        pools = sum(kind != "none" for kind in cfg.pooling)
        raise UsageError(
            f"model.pooling: the conv layers shrink {input_length} samples to 0 "
            f"({pools} pooling layers); use fewer pooling layers"
        )
    return length


def _check(cfg: ModelConfig, input_length: int, n_classes: int) -> int:
    if input_length < 1:
        raise UsageError(f"the beats have {input_length} samples; the model needs at least 1")
    if n_classes < 2:
        raise UsageError(f"the data has {n_classes} class; the model needs at least 2")
    length = output_length(cfg, input_length)
    channels = cfg.channels[-1]
    if cfg.attention and channels % cfg.attention_heads:
        raise UsageError(
            f"model.attention_heads: the last conv layer's {channels} channels do not split "
            f"into {cfg.attention_heads} heads; use a divisor of {channels}"
        )
    return length


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel, padding="same", dilation=dilation, bias=False),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two same-padded convs with BN, plus the input (1x1 projected when channels change)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, padding="same", dilation=dilation, bias=False),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv1d(c_out, c_out, kernel, padding="same", dilation=dilation, bias=False),
            nn.BatchNorm1d(c_out),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """Channel gates from the time-averaged features (Hu et al.), reduction 8."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=2)).unsqueeze(2)


class TemporalSelfAttention(nn.Module):
    """Multi-head self-attention across time steps, with learned positions, residual, LayerNorm."""

    def __init__(self, channels: int, length: int, heads: int):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, length, channels))
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.transpose(1, 2)  # [batch, time, channels]
        query = seq + self.position
        attended, _ = self.attn(query, query, query, need_weights=False)
        return self.norm(seq + attended).transpose(1, 2)


class AveragePool(nn.Module):
    """``AdaptiveAvgPool1d(out)`` for a fixed input length, as one matrix product."""

    weight: torch.Tensor

    def __init__(self, length_in: int, length_out: int):
        super().__init__()
        weight = torch.zeros(length_in, length_out)
        for i in range(length_out):
            start = (i * length_in) // length_out
            end = -((-(i + 1) * length_in) // length_out)
            weight[start:end, i] = 1.0 / (end - start)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


RHYTHM_CLIP = 8.0  # standard deviations: one odd interval (a gap in a record) stays bounded


class RhythmInput(nn.Module):
    """Rhythm features [batch, 6] -> the chosen columns, standardised: [batch, len(columns)].

    ``mean`` and ``std`` are persistent buffers (0 and 1 until :meth:`set_statistics`), so
    the statistics of the training fold travel in model.safetensors and every export.
    """

    mean: torch.Tensor
    std: torch.Tensor
    index: torch.Tensor

    def __init__(self, columns: list[str]):
        super().__init__()
        self.columns = list(columns)
        self.register_buffer("mean", torch.zeros(len(RHYTHM_FEATURES)))
        self.register_buffer("std", torch.ones(len(RHYTHM_FEATURES)))
        index = torch.tensor([RHYTHM_FEATURES.index(c) for c in columns], dtype=torch.long)
        self.register_buffer("index", index, persistent=False)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training fold's per-column mean and std (a std of 0 counts as 1)."""
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, rhythm: torch.Tensor) -> torch.Tensor:
        z = ((rhythm.float() - self.mean) / self.std).clamp(-RHYTHM_CLIP, RHYTHM_CLIP)
        return z.index_select(1, self.index)


class HeartCNN(nn.Module):
    def __init__(self, cfg: ModelConfig, input_length: int, n_classes: int):
        super().__init__()
        final_length = _check(cfg, input_length, n_classes)
        n = cfg.conv_layers
        layers: list[nn.Module] = []
        c_in, length = 1, input_length
        for i in range(n):
            c_out, kernel = cfg.channels[i], cfg.kernel_sizes[i]
            if cfg.residual and 2 <= i <= n - 2:
                layers.append(ResidualBlock(c_in, c_out, kernel, cfg.dilation))
            else:
                layers.append(ConvBNReLU(c_in, c_out, kernel, cfg.dilation))
            if cfg.squeeze_excite and i >= 1:
                layers.append(SqueezeExcite(c_out))
            if cfg.pooling[i] == "max":
                layers.append(nn.MaxPool1d(2, 2))
            elif cfg.pooling[i] == "avg":
                layers.append(nn.AvgPool1d(2, 2))
            if cfg.pooling[i] != "none":
                length //= 2
            c_in = c_out
        assert length == final_length
        self.features = nn.Sequential(*layers)
        self.attention: nn.Module = (
            TemporalSelfAttention(c_in, length, cfg.attention_heads)
            if cfg.attention
            else nn.Identity()
        )
        self.pool = AveragePool(length, cfg.pool_output)
        self.rhythm: RhythmInput | None = RhythmInput(cfg.rhythm_columns) if cfg.rhythm else None
        head: list[nn.Module] = [nn.Flatten()]
        width = c_in * cfg.pool_output + (len(cfg.rhythm_columns) if cfg.rhythm else 0)
        for size in cfg.fc:
            head += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)]
            width = size
        head.append(nn.Linear(width, n_classes))
        self.head = nn.Sequential(*head)
        self.input_length = input_length
        self.n_classes = n_classes

    @property
    def uses_rhythm(self) -> bool:
        return self.rhythm is not None

    def forward(self, x: torch.Tensor, rhythm: torch.Tensor | None = None) -> torch.Tensor:
        """Beats float32 [batch, length] (and, for a rhythm model, its rhythm features
        [batch, 6]) -> logits [batch, n_classes]."""
        z = self.features(x.unsqueeze(1))
        z = self.pool(self.attention(z)).flatten(1)
        if self.rhythm is not None:
            if rhythm is None:
                raise ValueError("this model takes a second input: the rhythm features")
            z = torch.cat([z, self.rhythm(rhythm).to(z.dtype)], dim=1)
        return self.head(z)


def build_model(cfg: ModelConfig, input_length: int, n_classes: int) -> nn.Module:
    """The CNN described by ``[model]`` for beats of ``input_length`` samples."""
    return HeartCNN(cfg, input_length, n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
