"""The configurable CNN: the seed architecture, the extremes of the search space, exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from heartcli.config import ModelConfig
from heartcli.errors import UsageError
from heartcli.model.network import build_model, count_parameters, output_length


def model_cfg(**overrides: object) -> ModelConfig:
    return ModelConfig.model_validate(overrides)


def test_seed_architecture_layers_and_size():
    model = build_model(ModelConfig(), 187, 5)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == [
        "ConvBNReLU",
        "ConvBNReLU",
        "SqueezeExcite",
        "MaxPool1d",
        "ResidualBlock",
        "SqueezeExcite",
        "ResidualBlock",
        "SqueezeExcite",
        "ConvBNReLU",
        "SqueezeExcite",
    ]
    assert output_length(ModelConfig(), 187) == 93
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [384, 256, 96, 5]
    assert model.head[1].in_features == 160 * 8
    assert count_parameters(model) == 829_177
    model.eval()
    assert model(torch.zeros(3, 187)).shape == (3, 5)


EXTREMES = [
    dict(conv_layers=2, channels=[4, 4], kernel_sizes=[3, 3], pooling=["none", "none"]),
    dict(
        conv_layers=6,
        channels=[8, 16, 16, 32, 32, 64],
        kernel_sizes=[11, 11, 11, 11, 11, 11],
        pooling=["max"] * 6,
        dilation=8,
        attention=True,
        attention_heads=8,
    ),
    dict(
        conv_layers=6,
        channels=[8] * 6,
        kernel_sizes=[3, 5, 7, 9, 11, 3],
        pooling=["avg", "max", "none", "avg", "max", "none"],
        squeeze_excite=False,
        residual=False,
        fc=[8, 8, 8],
        dropout=0.0,
        pool_output=1,
    ),
    dict(
        conv_layers=3,
        channels=[4, 6, 10],
        kernel_sizes=[4, 6, 8],
        pooling=["max"] * 3,
        dilation=4,
        attention=True,
        attention_heads=5,
        pool_output=40,
    ),
]


@pytest.mark.parametrize("overrides", EXTREMES)
@pytest.mark.parametrize(("length", "n_classes"), [(187, 5), (64, 2)])
def test_extreme_configs_give_logits_per_class(overrides, length, n_classes):
    torch.manual_seed(0)
    model = build_model(model_cfg(**overrides), length, n_classes)
    model.train()
    x = torch.randn(4, length)
    logits = model(x)
    assert logits.shape == (4, n_classes)
    logits.sum().backward()  # trainable end to end
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_attention_is_real_temporal_self_attention():
    model = build_model(model_cfg(attention=True), 187, 5)
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attention) == 1
    assert attention[0].embed_dim == 160
    assert attention[0].num_heads == 4
    assert any(isinstance(m, nn.LayerNorm) for m in model.modules())
    plain = build_model(ModelConfig(), 187, 5)
    assert count_parameters(model) > count_parameters(plain)


def test_a_config_that_shrinks_the_beat_to_nothing_names_the_key():
    cfg = model_cfg(conv_layers=8, channels=[4] * 8, kernel_sizes=[3] * 8, pooling=["max"] * 8)
    with pytest.raises(UsageError) as err:
        build_model(cfg, 187, 5)
    assert str(err.value) == (
        "model.pooling: the conv layers shrink 187 samples to 0 (8 pooling layers); "
        "use fewer pooling layers"
    )


def test_attention_heads_must_divide_the_channels():
    with pytest.raises(UsageError) as err:
        build_model(model_cfg(attention=True, attention_heads=3), 187, 5)
    assert str(err.value) == (
        "model.attention_heads: the last conv layer's 160 channels do not split into 3 heads; "
        "use a divisor of 160"
    )


def test_shrinking_config_is_rejected_by_train_before_anything_is_written(heart, sample_dir):
    result = heart(
        "train",
        "--set",
        f"data.dir={sample_dir}",
        "--set",
        "model.conv_layers=8",
        "--set",
        "model.channels=[4,4,4,4,4,4,4,4]",
        "--set",
        "model.kernel_sizes=[3,3,3,3,3,3,3,3]",
        "--set",
        'model.pooling=["max","max","max","max","max","max","max","max"]',
        "--set",
        "tracking.enabled=false",
        "--name",
        "shrunk",
        expect=2,
    )
    assert result.stderr.strip() == (
        "error: model.pooling: the conv layers shrink 187 samples to 0 (8 pooling layers); "
        "use fewer pooling layers"
    )
    assert not Path("runs/shrunk").exists()


@pytest.mark.slow
@pytest.mark.parametrize("attention", [False, True])
def test_heart_export_writes_onnx_and_pt2_that_match_torch(heart, sample_dir, attention):
    """heart's own exporter (not torch's called by hand), through the CLI: `heart export`
    reloads every file in its runtime and checks it against the PyTorch model on real beats."""
    import onnxruntime  # a hard dependency: a broken install fails here, it does not skip

    quick = Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml"
    name = f"att{int(attention)}"
    heart(
        "-q",
        "train",
        "--config",
        quick,
        "--name",
        name,
        *("--set", f"data.dir={sample_dir}", "--set", "train.epochs=1"),
        *("--set", "resample.target=100", "--set", "tracking.enabled=false"),
        *("--set", f"model.attention={str(attention).lower()}", "--set", "model.pool_output=8"),
    )
    summary = heart.json("export", f"runs/{name}", "--format", "onnx", "--format", "pt2")
    files = {f["format"]: f for f in summary["files"]}
    assert set(files) == {"onnx", "pt2"}
    for entry in files.values():
        assert entry["parity"]["max_abs_diff"] <= 1e-4
        assert entry["parity"]["argmax_agreement"] == 1.0
    session = onnxruntime.InferenceSession(f"runs/{name}/export/model.onnx")
    assert session.get_inputs()[0].shape[0] != 1  # the batch axis is dynamic
