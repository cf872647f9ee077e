"""`heart export` through the CLI on the session's trained run (conftest: the quick-start CNN,
1 epoch on the sample), evaluated and exported once per session."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from conftest import SAMPLE, Exported, one_error, quick_args

from heartcli import export as export_service
from heartcli.export.int8 import INT8_KEYS


@pytest.fixture
def tiny(exported: Exported) -> Exported:
    """The session's trained run, evaluated and exported in every format (conftest)."""
    return exported


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_every_format_passes_parity_and_describes_itself(tiny):
    s = tiny.summary
    names = {f["file"]: f for f in s["files"]}
    assert list(names) == ["model.onnx", "model.pt2", "model.torchscript.pt", "model.int8.onnx"]
    assert s["parity"]["beats"] == 1000  # 615 test beats of the sample, topped up from train
    assert "615 from" in s["parity"]["source"] and "385 from" in s["parity"]["source"]
    assert s["parity"]["passed"] == ["model.onnx", "model.pt2", "model.torchscript.pt"]
    for name in s["parity"]["passed"]:
        p = names[name]["parity"]
        assert p["beats"] == 1000 and p["argmax_agreement"] == 1.0
        assert p["max_abs_diff"] <= 1e-4
    assert names["model.onnx"]["opset"] == 18

    card = json.loads((tiny.export / "model_card.json").read_text())
    assert card["classes"] == ["N", "S", "V", "F", "Q"]
    assert card["input"]["shape"] == ["batch", 187] and card["input"]["sampling_rate_hz"] == 120
    assert card["input"]["lead"] == "channel0"
    assert card["output"]["shape"] == ["batch", 5]
    assert card["training"]["split"] == "random" and card["training"]["data_dir"] == str(SAMPLE)
    ev = card["evaluation"]
    assert ev["status"] == "evaluated" and ev["n"] == 615
    lo, hi = ev["macro_f1_ci95"]
    assert lo <= ev["macro_f1"] <= hi
    for entry in card["files"]:  # every exported file's SHA-256, also in SHA256SUMS
        assert entry["sha256"] == sha256(tiny.export / entry["file"])
    sums = dict(
        reversed(line.split("  ")) for line in (tiny.export / "SHA256SUMS").read_text().splitlines()
    )
    assert set(sums) == {*names, "model_card.json", "MODEL_CARD.md"}
    assert all(sums[n] == sha256(tiny.export / n) for n in sums)
    md = (tiny.export / "MODEL_CARD.md").read_text()
    assert "187 samples at 120 Hz" in md and "95% bootstrap CI" in md
    assert names["model.pt2"]["sha256"] in md

    assert "quantized" not in s and "quantized" not in card
    [q] = s["int8"]  # the dynamic int8 file, in the one shape of every int8 file
    assert tuple(q) == INT8_KEYS and q == card["int8"][0]
    assert q["file"] == "model.int8.onnx" and q["mode"] == "dynamic" and q["calibration"] is None
    assert q["method"] == names["model.int8.onnx"]["exporter"]
    assert q["within_tolerance"] == (q["macro_f1_loss"] <= q["tolerance"])
    assert q["test_beats"] == 615 and 0.0 < q["macro_f1_int8"] <= 1.0
    assert q["macro_f1_float"] == pytest.approx(ev["macro_f1"], abs=1e-9)
    assert q["agreement"] >= 0.8
    # The ONNX graph takes any batch size.
    graph = onnx.load(str(tiny.export / "model.onnx")).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 187


def test_export_default_folder_not_evaluated_and_force(heart, tiny, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny.run, run)
    (run / "eval.json").unlink()
    s = heart.json("export", run, "--format", "pt2")
    assert s["out"] == str(run / "export") and [f["file"] for f in s["files"]] == ["model.pt2"]
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["evaluation"]["status"] == "not evaluated"
    assert "Not evaluated" in (run / "export" / "MODEL_CARD.md").read_text()
    again = heart("export", run, "--format", "pt2", expect=2)
    assert f"error: {run / 'export'} already exists; pass --force to replace it" in again.stderr
    heart("-q", "export", run, "--format", "torchscript", "--force")
    assert sorted(p.name for p in (run / "export").iterdir()) == [
        "MODEL_CARD.md", "SHA256SUMS", "model.torchscript.pt", "model_card.json",
    ]  # fmt: skip
    assert not [p for p in run.iterdir() if p.name.startswith(".export")]


def _break_last_layer(folder: Path) -> None:
    """Shift one class's logit in the exported ONNX: a plausible but wrong model."""
    path = folder / "model.onnx"
    proto = onnx.load(str(path))
    last = [i for i in proto.graph.initializer if len(i.dims) == 1 and i.dims[0] == 5][-1]
    values = onnx.numpy_helper.to_array(last).copy()
    values[1] += 0.5
    last.CopyFrom(onnx.numpy_helper.from_array(values, last.name))
    onnx.save(proto, str(path))


def test_altered_export_fails_parity_and_leaves_nothing(heart, tiny, tmp_path, monkeypatch):
    real_export_onnx = export_service.export_onnx

    def export_then_break(*args, **kwargs):
        # The real exporter writes the file, then one weight is shifted: a plausible but
        # wrong model that only the parity check can catch.
        info = real_export_onnx(*args, **kwargs)
        _break_last_layer(Path(args[2]).parent)
        return info

    monkeypatch.setattr(export_service, "export_onnx", export_then_break)
    out = tmp_path / "exported"
    result = heart("-q", "export", tiny.run, "--format", "onnx", "--out", out, expect=1)
    line = result.stderr.strip()
    assert line.startswith("error: model.onnx: parity check failed: max |p - p_torch| = ")
    assert line.endswith("> export.atol 0.0001 on 1,000 beats; nothing was written")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no folder, no temp folder


def test_export_bad_usage(heart, tiny, tmp_path):
    r = heart("export", tiny.run, "--format", "tflite", expect=2)
    assert (
        "error: Invalid value for '--format' / '-f': 'tflite' is not one of 'onnx', 'pt2', "
        "'torchscript', 'pte', 'all'; see `"
    ) in r.stderr
    r = heart(
        "export",
        tiny.run,
        "--format",
        "pt2",
        "--quantize",
        "dynamic",
        "--out",
        tmp_path / "o",
        expect=2,
    )
    assert "error: --quantize makes an int8 copy of the ONNX model; add --format onnx" in r.stderr
    r = heart("export", tmp_path, expect=1)
    assert f"error: {tmp_path}: not a heart run folder (manifest.json missing)" in r.stderr
    assert not (tmp_path / "o").exists()


def test_onnx_probabilities_match_numpy_softmax_of_torch(tiny):
    """The exported graph ends in the softmax: rows are probabilities."""
    import onnxruntime as ort

    from heartcli.data.dataset import load_split

    x = load_split(SAMPLE, "random", "test").x[:64]
    session = ort.InferenceSession(str(tiny.export / "model.onnx"))
    p = session.run(None, {"beats": x})[0]
    assert p.shape == (64, 5) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


# --------------------------------------------- moved here from tests/test_hardening.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def test_export_restores_the_root_logger(heart, sample_dir, tmp_path):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "x")
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        heart(
            "-q",
            "export",
            "runs/x",
            "--format",
            "onnx",
            "--quantize",
            "dynamic",
            "--out",
            tmp_path / "e",
        )
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


# --------------------------------------------- moved here from tests/test_trust.py


@pytest.fixture
def tiny_trust(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


def test_export_force_replaces_only_a_heart_export(heart, tiny_trust, tmp_path):
    run = tmp_path / "runs" / "x<img src=y>*b*[l](u)|"  # a run folder renamed by hand
    shutil.copytree(tiny_trust, run)
    out = tmp_path / "exported"
    beats = SAMPLE / "random" / "test.parquet"  # --data FILE: a documented form
    heart("-q", "export", run, "--format", "torchscript", "--out", out, "--data", beats)
    card = (out / "MODEL_CARD.md").read_text()
    assert "<img" not in card and "# Model card: x&lt;img src=y&gt;\\*b\\*\\[l\\]\\(u\\)\\|" in card
    heart("-q", "export", run, "--format", "torchscript", "--out", out, "--force")  # an export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    other = tmp_path / "runs" / "other"
    shutil.copytree(tiny_trust, other)
    dataset = tmp_path / "dataset"
    shutil.copytree(SAMPLE, dataset)
    for folder in (mine, other, dataset):
        before = sorted(p.name for p in folder.iterdir())
        r = heart("export", run, "--format", "torchscript", "--out", folder, "--force", expect=2)
        assert "--force replaces only a folder heart exported" in one_error(r.stderr)
        assert sorted(p.name for p in folder.iterdir()) == before
    (out / "mine.txt").write_text("x")  # an export with a user's file added to it
    heart("export", run, "--format", "torchscript", "--out", out, "--force", expect=2)
    assert (out / "mine.txt").exists()
