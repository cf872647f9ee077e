"""`[model] rhythm`, `[train] val_records` and `heart train --folds`, through the CLI, on the
bundled sample's inter-patient split (real beats of 22 DS1 and 22 DS2 records) and record 100."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, SAMPLE, Heart, last_line, quick_args

from heartcli.data.dataset import RHYTHM_COLUMNS, load_split
from heartcli.model.load import load_run

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


def test_kfold_by_record(heart, tmp_path):
    summary = heart.json("train", *QUICK, "--name", "cv", "--folds", "3")
    train = load_split(SAMPLE, "inter-patient", "train", classes={"Q": "drop"})
    records = set(np.unique(train.record.astype(str)))
    folds = [set(f["val_records"]) for f in summary["folds"]]
    assert len(folds) == 3
    assert set().union(*folds) == records  # every record validated once ...
    assert sum(len(f) for f in folds) == len(records)  # ... and in one fold only
    for fold in folds:
        assert strata(train, fold) == strata(train, records - fold) == {"S", "V"}
    for f in summary["folds"]:  # each fold trained on the other records only
        fold_manifest = json.loads((tmp_path / f["run_dir"] / "manifest.json").read_text())
        assert sum(fold_manifest["data"]["val_counts"].values()) == int(
            np.isin(train.record.astype(str), f["val_records"]).sum()
        )
        assert sum(fold_manifest["data"]["train_counts"].values()) + sum(
            fold_manifest["data"]["val_counts"].values()
        ) == len(train)
    figures = summary["figures"]
    f1 = [f["macro_f1"] for f in summary["folds"]]
    assert figures["macro_f1"]["mean"] == pytest.approx(np.mean(f1), abs=1e-4)
    assert figures["macro_f1"]["std"] == pytest.approx(np.std(f1), abs=1e-4)
    assert set(figures) >= {"sveb_se", "sveb_ppv", "veb_se", "veb_ppv", "best_epoch"}
    epochs = max(1, round(np.mean([f["best_epoch"] for f in summary["folds"]])))
    assert summary["final_epochs"] == epochs
    final = json.loads((tmp_path / "runs" / "cv" / "manifest.json").read_text())
    assert final["data"]["validation"] is False and final["data"]["val_counts"]["N"] == 0
    assert sum(final["data"]["train_counts"].values()) == len(train)  # all of DS1
    assert final["epochs_run"] == epochs and final["crossval"]["final_epochs"] == epochs
    heart.json("evaluate", tmp_path / "runs" / "cv")  # the final model is a normal run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--folds", "1"), "--folds 1: use 2 or more folds"),
        (("--folds", "23"), "--folds 23: the training split has 22 records; use 2 to 22"),
        (("--set", "train.val_records=22"), "train.val_records = 22: the training split has 22"),
        (("--set", 'train.val_records=["101", "999"]'), "train.val_records: no record 999"),
    ],
)
def test_bad_folds_and_val_records(heart, tmp_path, args, expected):
    result = heart("train", *QUICK, *args, expect=2)
    line = last_line(result.stderr)
    assert line.startswith("error: ") and expected in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_interpatient_example_is_a_valid_recipe(heart):
    shown = heart.json("config", "show", "--config", EXAMPLES / "interpatient.toml")
    assert shown["data"]["split"] == "inter-patient"
    assert shown["data"]["classes"] == {"Q": "drop"}
    assert shown["model"]["rhythm"] is True
    assert shown["train"]["scheduler"] != "plateau"  # --folds needs a schedule of its own
