"""The configurable 1D CNN: the seed architecture by default, every search knob a config key.

Layer ``i`` of ``[model]`` (0-based, ``n = conv_layers``) is a Conv+BN+ReLU, or a residual
block when ``residual`` is on and ``2 <= i <= n - 2`` ("the layers between the first two and
the last"); squeeze-excite follows every layer but the first; pooling (kernel 2, stride 2)
comes last. With ``separable`` every conv after the first is depthwise-separable (a
depthwise conv, then a 1x1 pointwise one); ``width`` scales every entry of ``channels``.
Optional multi-head temporal self-attention runs over the final conv features,
then an adaptive average pool, the fully connected layers and the output logits.

With ``rhythm = true`` the model takes a second input, the nine rhythm columns of every beat
(``RHYTHM_FEATURES``, float32 ``[batch, 9]``): :class:`RhythmInput` computes the
``rhythm_columns`` from them (intervals relative to the record's mean RR among them), takes
their log (``rhythm_scale = "log"``), standardises them with statistics of the training fold
(buffers of the model state, so every run, export and prediction carries them), clips them to
+-``RHYTHM_CLIP`` and concatenates them to the pooled conv features before the fully
connected layers; ``rhythm_wide`` adds a linear map of them straight to the logits.

The forward pass has no data-dependent control flow, so the model exports to ONNX and
``torch.export``. The adaptive pool is a fixed averaging matrix (exactly
``AdaptiveAvgPool1d``) because ONNX has no adaptive pool for lengths that do not divide.
"""

from __future__ import annotations

import torch
from torch import nn

from heartcli.config import RHYTHM_DERIVED, RHYTHM_FEATURES, ModelConfig
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
    channels = scaled_channels(cfg)[-1]
    if cfg.attention and channels % cfg.attention_heads:
        raise UsageError(
            f"model.attention_heads: the last conv layer's {channels} channels do not split "
            f"into {cfg.attention_heads} heads; use a divisor of {channels}"
        )
    return length


def scaled_channels(cfg: ModelConfig) -> list[int]:
    """``[model] channels`` times ``[model] width`` (rounded, at least 1 each)."""
    return [max(1, round(c * cfg.width)) for c in cfg.channels]


def conv(c_in: int, c_out: int, kernel: int, dilation: int, separable: bool = False) -> nn.Module:
    """A same-padded conv without bias; ``separable``: depthwise then 1x1 pointwise."""
    if not separable or kernel == 1:
        return nn.Conv1d(c_in, c_out, kernel, padding="same", dilation=dilation, bias=False)
    return nn.Sequential(
        nn.Conv1d(c_in, c_in, kernel, padding="same", dilation=dilation, groups=c_in, bias=False),
        nn.Conv1d(c_in, c_out, 1, bias=False),
    )


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, separable: bool = False):
        super().__init__(
            conv(c_in, c_out, kernel, dilation, separable),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two same-padded convs with BN, plus the input (1x1 projected when channels change)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, separable: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            conv(c_in, c_out, kernel, dilation, separable),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, kernel, dilation, separable),
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
RHYTHM_FLOOR = (
    1e-3  # log scale: an interval or ratio below this (two beats on one sample) counts as it
)
IQR_TO_STD = 1.349  # interquartile range of a normal distribution, in standard deviations


class RhythmInput(nn.Module):
    """Rhythm features [batch, 9] -> the chosen features, standardised: [batch, len(columns)].

    A chosen feature is one of the nine columns or an interval relative to the record's mean
    RR (``RHYTHM_DERIVED``); on the log scale its log is taken (ratios of 0.7 and 1/0.7 lie
    symmetric around a regular beat, and one long pause no longer sets the scale). ``center``
    and ``scale`` are persistent buffers set by :meth:`fit` from the training fold (median
    and IQR / 1.349 on the log scale, mean and std on the linear one), so they travel in
    model.safetensors and every export.
    """

    center: torch.Tensor
    scale: torch.Tensor
    num: torch.Tensor
    den: torch.Tensor

    def __init__(self, columns: list[str], log: bool = True):
        super().__init__()
        self.columns = list(columns)
        self.log = log
        pairs = [RHYTHM_DERIVED.get(c, (c, None)) for c in self.columns]
        ones = len(RHYTHM_FEATURES)  # index of a column of ones appended to the input
        num = [RHYTHM_FEATURES.index(n) for n, _ in pairs]
        den = [ones if d is None else RHYTHM_FEATURES.index(d) for _, d in pairs]
        self.register_buffer("num", torch.tensor(num, dtype=torch.long), persistent=False)
        self.register_buffer("den", torch.tensor(den, dtype=torch.long), persistent=False)
        self.register_buffer("center", torch.zeros(len(self.columns)))
        self.register_buffer("scale", torch.ones(len(self.columns)))

    def features(self, rhythm: torch.Tensor) -> torch.Tensor:
        """The chosen features before standardising (log taken on the log scale)."""
        raw = rhythm.float()
        padded = torch.cat([raw, torch.ones_like(raw[:, :1])], dim=1)
        num, den = padded.index_select(1, self.num), padded.index_select(1, self.den)
        value = torch.where(den > 0, num / den.clamp_min(RHYTHM_FLOOR), torch.ones_like(num))
        return torch.log(value.clamp_min(RHYTHM_FLOOR)) if self.log else value

    @torch.no_grad()
    def fit(self, rhythm: torch.Tensor) -> tuple[list[float], list[float]]:
        """Set ``center`` and ``scale`` from the training fold's rhythm columns [n, 9];
        returns them. A scale of 0 (a constant feature) counts as 1."""
        values = self.features(rhythm).double()
        if self.log:
            q25, center, q75 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]).double(), 0)
            scale = (q75 - q25) / IQR_TO_STD
            scale = torch.where(scale > 0, scale, values.std(0, unbiased=False))
        else:
            center, scale = values.mean(0), values.std(0, unbiased=False)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.center.copy_(center.float())
        self.scale.copy_(scale.float())
        return self.center.tolist(), self.scale.tolist()

    def forward(self, rhythm: torch.Tensor) -> torch.Tensor:
        z = (self.features(rhythm) - self.center) / self.scale
        return z.clamp(-RHYTHM_CLIP, RHYTHM_CLIP)


class HeartCNN(nn.Module):
    def __init__(self, cfg: ModelConfig, input_length: int, n_classes: int):
        super().__init__()
        final_length = _check(cfg, input_length, n_classes)
        n = cfg.conv_layers
        layers: list[nn.Module] = []
        c_in, length = 1, input_length
        channels = scaled_channels(cfg)
        for i in range(n):
            c_out, kernel = channels[i], cfg.kernel_sizes[i]
            sep = cfg.separable and i >= 1  # the first conv sees one channel: nothing to split
            if cfg.residual and 2 <= i <= n - 2:
                layers.append(ResidualBlock(c_in, c_out, kernel, cfg.dilation, sep))
            else:
                layers.append(ConvBNReLU(c_in, c_out, kernel, cfg.dilation, sep))
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
        self.rhythm: RhythmInput | None = (
            RhythmInput(cfg.rhythm_columns, log=cfg.rhythm_scale == "log") if cfg.rhythm else None
        )
        self.wide: nn.Module | None = (
            nn.Linear(len(cfg.rhythm_columns), n_classes)
            if cfg.rhythm and cfg.rhythm_wide
            else None
        )
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
        [batch, 9]) -> logits [batch, n_classes]."""
        return self.classify(self.embed(x), rhythm)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled conv features of beats [batch, length]: [batch, channels * pool_output]."""
        z = self.features(x.unsqueeze(1))
        return self.pool(self.attention(z)).flatten(1)

    def classify(self, z: torch.Tensor, rhythm: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the pooled conv features (:meth:`embed`) and, for a rhythm model, the
        rhythm features: the part `heart predict --adapt labels` fine-tunes."""
        if self.rhythm is not None:
            if rhythm is None:
                raise ValueError("this model takes a second input: the rhythm features")
            r = self.rhythm(rhythm).to(z.dtype)
            logits = self.head(torch.cat([z, r], dim=1))
            return logits if self.wide is None else logits + self.wide(r)
        return self.head(z)


def build_model(cfg: ModelConfig, input_length: int, n_classes: int) -> nn.Module:
    """The CNN described by ``[model]`` for beats of ``input_length`` samples."""
    return HeartCNN(cfg, input_length, n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
