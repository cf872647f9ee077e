"""The configurable CNN: the seed architecture, the extremes of the search space, exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLE, Heart, last_line, quick_args
from torch import nn

from heartcli.config import ModelConfig
from heartcli.data.dataset import RHYTHM_COLUMNS, load_split
from heartcli.errors import UsageError
from heartcli.model.load import load_run
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


# --------------------------------------------- moved here from tests/test_rhythm_model.py


# The quick-start CNN on the sample (conftest), inter-patient without Q, every class kept.
QUICK = quick_args(
    "data.split=inter-patient", 'data.classes={Q = "drop"}', "resample.min_beats=1",
    "train.scheduler=cosine",
)  # fmt: skip


def strata(beats, records):
    """Set of the classes S and V present among the beats of ``records``."""
    mask = np.isin(beats.record.astype(str), list(records))
    return {beats.classes[c] for c in np.unique(beats.y[mask])} & {"S", "V"}


USED = ["rr_pre_local", "rr_post_pre", "rr_pre_record", "rr_local_record", "tpl_decorr"]


@pytest.fixture(scope="module")
def rhythm_run(tmp_path_factory):
    """One tiny rhythm model, validated on 4 whole DS1 records, exported in every format: two
    ratios, two intervals relative to the record's mean RR (computed inside the model), a
    template feature, and the wide path from them to the logits."""
    root = tmp_path_factory.mktemp("rhythm")
    heart = Heart()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        heart(
            "-q", "train", *QUICK, "--name", "rr", "--set", "model.rhythm=true",
            "--set", "train.val_records=4", "--set", f"model.rhythm_columns={USED}",
            "--set", "model.rhythm_wide=true",
        )  # fmt: skip
        heart("-q", "export", root / "runs" / "rr", "--format", "all", "--out", root / "export")
    return root / "runs" / "rr", root / "export"


@pytest.mark.slow
def test_rhythm_model_statistics_of_the_training_fold(rhythm_run):
    run_dir, _ = rhythm_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    train = load_split(SAMPLE, "inter-patient", "train", classes={"Q": "drop"})
    val_records = manifest["data"]["val_records"]
    assert len(val_records) == 4
    # Whole records, stratified: S and V on both sides of the cut.
    rest = set(np.unique(train.record.astype(str))) - set(val_records)
    assert strata(train, val_records) == strata(train, rest) == {"S", "V"}
    fold = train.rhythm[~np.isin(train.record.astype(str), val_records)]
    stats = manifest["rhythm"]
    assert stats["columns"] == list(RHYTHM_COLUMNS)
    assert stats["used"] == USED and stats["scale_kind"] == "log"
    # The log scale, by hand: median and IQR / 1.349 of the log of each feature.
    pre, _, local, record, pre_local, post_pre, decorr, _, _ = fold.astype(np.float64).T
    used = np.stack([pre_local, post_pre, pre / record, local / record, decorr], axis=1)
    logs = np.log(np.clip(used, 1e-3, None))
    q25, median, q75 = np.quantile(logs, [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(stats["center"], median, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["scale"], (q75 - q25) / 1.349, rtol=1e-5, atol=1e-6)
    # The statistics travel in the weights (model buffers), for evaluate, export, predict.
    model = load_run(run_dir).model
    np.testing.assert_allclose(model.rhythm.center.numpy(), median, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_rhythm_model_evaluates_exports_and_predicts(heart, rhythm_run, mitdb_dir, tmp_path):
    run_dir, export = rhythm_run
    result = heart.json("evaluate", run_dir)
    assert result["n"] == 525  # the sample's DS2 beats without Q

    card = json.loads((export / "model_card.json").read_text())
    assert card["rhythm_input"]["name"] == "rhythm"
    assert card["rhythm_input"]["columns"] == list(RHYTHM_COLUMNS)
    assert {f["file"] for f in card["files"]} == {"model.onnx", "model.pt2", "model.torchscript.pt"}
    assert all(f["parity"]["argmax_disagreements"] == 0 for f in card["files"])
    assert "input `rhythm`: float32 `[batch, 9]`" in (export / "MODEL_CARD.md").read_text()
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == [("beats", 187), ("rhythm", 9)]

    # Record 100 with its .atr: the features come from the annotations, with the code of
    # `heart fetch`, so the sample's rows of record 100 get the same probabilities from
    # the record as from the dataset file's own rhythm columns.
    by_record = tmp_path / "by_record.parquet"
    annotated = heart.json("predict", export / "model.onnx", mitdb_dir / "100", "--out", by_record)
    assert annotated["segmentation"] == "annotations" and annotated["beats"] == 2272
    test_file = SAMPLE / "inter-patient" / "test.parquet"
    by_file = tmp_path / "by_file.parquet"
    heart.json("predict", export / "model.onnx", test_file, "--out", by_file)
    rec, fil = pq.read_table(by_record).to_pandas(), pq.read_table(by_file).to_pandas()
    fil = fil[fil["record"] == "100"]
    assert len(fil) > 0
    joined = fil.merge(rec, on="sample", suffixes=("_file", "_record"))
    assert len(joined) == len(fil)
    for c in ("N", "S", "V", "F"):
        np.testing.assert_allclose(joined[f"p_{c}_file"], joined[f"p_{c}_record"], atol=1e-5)

    # Without the .atr: R-peaks detected, features from them; the run and its ONNX agree.
    bare = tmp_path / "bare"
    bare.mkdir()
    for ext in ("dat", "hea"):
        shutil.copy(mitdb_dir / f"100.{ext}", bare / f"100.{ext}")
    onnx_out = heart.json("predict", export / "model.onnx", bare / "100")
    torch_out = heart.json("predict", run_dir, bare / "100")
    assert onnx_out["segmentation"] == torch_out["segmentation"] == "detected"
    assert onnx_out["agreement"] is None
    assert abs(onnx_out["beats"] - 2272) < 30
    assert onnx_out["counts"] == torch_out["counts"]


@pytest.mark.slow
def test_rhythm_model_refuses_beats_without_rhythm_columns(heart, rhythm_run, tmp_path):
    run_dir, export = rhythm_run
    table = pq.read_table(SAMPLE / "inter-patient" / "test.parquet")
    bare = tmp_path / "no_rhythm.parquet"
    pq.write_table(table.drop_columns(list(RHYTHM_COLUMNS)), bare)
    partial = tmp_path / "partial.parquet"
    pq.write_table(table.drop_columns(["rr_local"]), partial)
    for model in (run_dir, export / "model.onnx"):
        result = heart("predict", model, bare, expect=2)
        line = last_line(result.stderr)
        assert line.startswith("error: ") and "rr_pre, rr_post" in line and "heart fetch" in line
        line = last_line(heart("predict", model, partial, expect=2).stderr)
        assert "no columns rr_local;" in line
    assert "Traceback" not in result.stderr


def test_rhythm_needs_a_dataset_with_rhythm_columns(heart, tmp_path, sample_dir):
    # A Kaggle CSV import has no beat timing, so no rhythm columns.
    imported = tmp_path / "kaggle"
    for part in ("train", "test"):
        beats = load_split(sample_dir, "random", part)
        data = np.hstack([beats.x.astype(np.float64), beats.y[:, None].astype(np.float64)])
        np.savetxt(tmp_path / f"mitbih_{part}.csv", data, delimiter=",", fmt="%.18e")
    heart(
        "-q", "fetch", "--import", tmp_path / "mitbih_train.csv", tmp_path / "mitbih_test.csv",
        "--out", imported,
    )  # fmt: skip
    result = heart(
        "train", *QUICK, "--set", f"data.dir={imported}", "--set", "data.split=mitbih",
        "--set", "model.rhythm=true", expect=2,
    )  # fmt: skip
    line = last_line(result.stderr)
    assert line.startswith("error: model.rhythm = true:")
    assert "rr_pre, rr_post, rr_local, rr_record, rr_pre_local, rr_post_pre" in line
    assert "`heart fetch`" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
