"""`heart evaluate` and the metrics: figures checked against scikit-learn, bad input as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MITDB, copy_run, one_error, quick_args
from sklearn import metrics as skm

from heartcli.data.dataset import load_split, write_beats
from heartcli.metrics import metrics


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the session's trained run (not evaluated), free to damage."""
    return copy_run(trained_run, tmp_path / "run")


def test_metrics_match_scikit_learn_on_real_labels(sample_dir):
    y_true = load_split(sample_dir, "random", "test").y
    rng = np.random.default_rng(1)
    y_pred = np.where(rng.random(len(y_true)) < 0.8, y_true, rng.integers(0, 5, len(y_true)))
    classes = ["N", "S", "V", "F", "Q"]
    m = metrics(y_true, y_pred, classes)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred)
    for i, name in enumerate(classes):
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert c["support"] == s[i]
        assert (c["sensitivity"], c["ppv"]) == (c["recall"], c["precision"])
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    lo, hi = m["macro_f1_ci95"]
    assert lo < m["macro_f1"] < hi
    assert 0.0 < hi - lo < 0.2
    # A perfect model has a degenerate interval at 1.
    assert metrics(y_true, y_true, classes)["macro_f1_ci95"] == [1.0, 1.0]


def test_evaluate_prints_every_figure_and_writes_eval_json(heart, run, sample_dir):
    out = heart("evaluate", run, "--data", sample_dir, "--split", "inter-patient").stdout
    assert f"figures from: {sample_dir} (split inter-patient, test part), 532 beats" in out
    assert "balanced accuracy" in out and "macro-F1" in out and "95% CI" in out
    assert "precision (+P)" in out and "recall (Se)" in out
    assert "confusion matrix (rows: true, columns: predicted)" in out
    saved = json.loads((run / "eval.json").read_text())
    assert saved["split"] == "inter-patient"
    assert saved["n"] == 532
    assert sum(map(sum, saved["confusion_matrix"])) == 532
    assert (run / "confusion.png").stat().st_size > 0


def test_evaluate_inter_patient_prints_the_aami_figures(heart, run, sample_dir):
    args = ("evaluate", run, "--data", sample_dir, "--split", "inter-patient")
    out = heart(*args).stdout
    assert "AAMI EC57" in out and "FPR" in out
    assert "SVEB: Se" in out and "VEB: Se" in out
    assert "jκ" in out and "κ/2 + j/8" in out
    assert "per record" in out and "232" in out
    result = heart.json(*args)
    figures = result["aami"]
    cm = np.array(result["confusion_matrix"])
    # The JSON figures follow from the confusion matrix it reports (Q row not scored).
    assert figures["scored_beats"] == cm[:4].sum() == 532 - 7
    s = figures["rows"]["SVEB"]
    assert s["se"] == pytest.approx(cm[1, 1] / cm[1].sum())
    assert s["ppv"] == pytest.approx(cm[1, 1] / cm[:4, 1].sum() if cm[:4, 1].sum() else 0.0)
    v = figures["rows"]["VEB"]
    assert v["fp"] == cm[:4, 2].sum() - cm[2, 2] - cm[3, 2]
    assert 0.0 <= figures["jk_index"] <= 1.0
    per_record = figures["per_record"]
    test = load_split(sample_dir, "inter-patient", "test")
    assert set(per_record) == set(test.record)
    assert sum(r["beats"] for r in per_record.values()) == 532 - 7
    assert sum(r["S"]["support"] for r in per_record.values()) == int((test.y == 1).sum())
    saved = json.loads((run / "eval.json").read_text())
    assert saved["aami"]["jk_index"] == figures["jk_index"]


def test_evaluate_a_parquet_file(heart, run, sample_dir):
    file = sample_dir / "random" / "test.parquet"
    result = heart.json("evaluate", run, "--data", file)
    assert result["data"] == str(file)
    assert result["split"] is None
    assert sum(c["support"] for c in result["per_class"].values()) == 615


def damage_manifest(run: Path) -> None:
    text = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(text[: len(text) // 2])


def damage_weights(run: Path) -> None:
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[:100])


def wrong_config(run: Path) -> None:
    path = run / "config.toml"
    path.write_text(path.read_text().replace("channels = [16, 32, 32]", "channels = [16, 32, 48]"))


def foreign(run: Path) -> None:
    (run / "manifest.json").write_text('{"name": "something else"}')


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: shutil.rmtree(r), "{run}: no such run folder; train one with `heart train`"),
        (
            lambda r: (r / "manifest.json").unlink(),
            "{run}: not a heart run folder (manifest.json missing)",
        ),
        (damage_manifest, "{run}/manifest.json: truncated or unreadable; retrain the run"),
        (foreign, "{run}: not a heart run folder (manifest.json is not a heart run manifest)"),
        (
            wrong_config,
            "{run}/model.safetensors: weights do not match the model section of config.toml "
            "(shape of features.5.0.weight is (32, 32, 3), config gives (48, 32, 3)); "
            "restore the run's config.toml or retrain",
        ),
        (
            lambda r: (r / "model.safetensors").unlink(),
            "{run}: no model.safetensors (no epoch finished); continue it with "
            "`heart train --resume {run}`",
        ),
    ],
)
def test_bad_run_folders_are_one_line(heart, run, damage, message):
    damage(run)
    result = heart("evaluate", run, expect=1)
    assert result.stderr.strip() == "error: " + message.format(run=run)


def test_truncated_weights(heart, run):
    damage_weights(run)
    result = heart("evaluate", run, expect=1)
    assert result.stderr.startswith(f"error: {run}/model.safetensors: truncated or unreadable")
    assert len(result.stderr.strip().splitlines()) == 1


def test_data_that_does_not_fit_the_model(heart, run, sample_dir, tmp_path):
    (run / "eval.json").write_text("{}")
    beats = load_split(sample_dir, "random", "test")
    short = beats.subset(np.arange(50))
    short.x = short.x[:, :120].copy()
    write_beats(tmp_path / "short.parquet", short)
    result = heart("evaluate", run, "--data", tmp_path / "short.parquet", expect=1)
    assert result.stderr.strip() == (
        f"error: {tmp_path}/short.parquet: beats have 120 samples but the model of {run} takes "
        "187; use data built like its training data"
    )
    other = beats.subset(np.arange(50))
    other.classes = ["N", "S", "V", "F", "X"]
    write_beats(tmp_path / "other.parquet", other)
    result = heart("evaluate", run, "--data", tmp_path / "other.parquet", expect=1)
    assert result.stderr.strip() == (
        f"error: {tmp_path}/other.parquet: classes N,S,V,F,X differ from the model's N,S,V,F,Q; "
        "use data with the model's class set"
    )
    nan = beats.subset(np.arange(50))
    nan.x[3, 0] = np.nan
    write_beats(tmp_path / "nan.parquet", nan)
    result = heart("evaluate", run, "--data", tmp_path / "nan.parquet", expect=1)
    assert result.stderr.strip() == (
        f"error: {tmp_path}/nan.parquet: row 3 has a NaN or infinite value; drop or repair it"
    )
    assert (run / "eval.json").read_text() == "{}"  # nothing overwritten


# --------------------------------------------- moved here from tests/test_hardening.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def test_evaluate_says_when_the_run_is_unfinished(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "e")
    manifest_file = Path("runs/e/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["status"] == "completed"
    result = heart("evaluate", "runs/e")
    assert "warning" not in result.stderr
    assert json.loads(Path("runs/e/eval.json").read_text())["run_status"] == "completed"
    # A run stopped by kill -9 mid-training keeps the manifest it wrote when it started.
    manifest["status"] = "running"
    manifest_file.write_text(json.dumps(manifest))
    result = heart("-q", "evaluate", "runs/e")
    assert "warning: the run is running, not finished" in result.stderr
    written = json.loads(Path("runs/e/eval.json").read_text())
    assert written["run_status"] == "running"
    assert written["warning"].startswith("the run is running, not finished")


# --------------------------------------------- moved here from tests/test_trust.py


@pytest.fixture
def tiny(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


def test_a_model_that_outputs_nan_is_never_scored(heart, tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "nan-run"
    shutil.copytree(tiny, run)
    state = load_file(run / "model.safetensors")
    first = next(k for k in state if k.endswith("weight") and state[k].is_floating_point())
    state[first][:] = float("nan")
    save_file(state, str(run / "model.safetensors"), metadata={"format": "heart-run/1"})
    r = heart("predict", run, MITDB / "100", expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr) and str(run) in r.stderr
    r = heart("evaluate", run, expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr)
    assert not (run / "eval.json").exists()
    r = heart("export", run, "--format", "onnx", "--out", tmp_path / "e", expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr)
    assert not (tmp_path / "e").exists()
