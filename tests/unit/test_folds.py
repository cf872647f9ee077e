"""`heart train --folds K` on the random (beat-level) split: stratified beat folds, the
out-of-fold figures, and the refusals; through the CLI on the bundled sample's real beats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, QUICK_INTER_PATIENT, SAMPLE, last_line, quick_args, strata

from heartcli.data.dataset import load_split
from heartcli.metrics import metrics

# The quick-start CNN on the sample (conftest), 150 beats a class, every class kept, cosine.
QUICK = quick_args("resample.target=150", "resample.min_beats=1", "train.scheduler=cosine")


def test_stratified_folds_on_the_random_split(heart, tmp_path):
    summary = heart.json("train", *QUICK, "--name", "cv", "--folds", "3")
    beats = load_split(SAMPLE, "random", "train")
    total = beats.counts()
    run = tmp_path / "runs" / "cv"

    # Every beat of the training split is validated once, by exactly one fold ...
    with np.load(run / "oof.npz") as oof:
        index, fold, y, proba = oof["index"], oof["fold"], oof["y"], oof["proba"]
    assert np.array_equal(index, np.arange(len(beats)))
    assert np.array_equal(y, beats.y)
    assert sorted(np.unique(fold)) == [1, 2, 3]
    for i, f in enumerate(summary["folds"], start=1):
        assert f["val_records"] == []  # beats, not records
        manifest = json.loads((run / "folds" / f"fold-{i}" / "manifest.json").read_text())
        val, train = manifest["data"]["val_counts"], manifest["data"]["train_counts"]
        # ... every class on both sides of every fold, in the split's proportions ...
        assert all(val[c] > 0 and train[c] > 0 for c in beats.classes)
        # ... and a fold's training beats are all the others: none on both sides.
        assert all(val[c] + train[c] == total[c] for c in beats.classes)
        assert f["val_beats"] == sum(val.values())
        in_fold = np.bincount(beats.y[fold == i], minlength=len(beats.classes))
        assert [val[c] for c in beats.classes] == in_fold.tolist()
        for c, n in zip(beats.classes, in_fold, strict=True):
            assert abs(n - total[c] / 3) <= 1  # stratified: a third of each class, +-1

    # The out-of-fold figures are those of the fold models' predictions on their own fold.
    oof = summary["oof"]
    expected = metrics(y, proba.argmax(axis=1), beats.classes)
    assert oof["n"] == len(beats)
    assert oof["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-4)
    lo, hi = oof["macro_f1_ci95"]
    assert lo <= oof["macro_f1"] <= hi and hi - lo > 0
    assert oof["f1"]["N"] == pytest.approx(expected["per_class"]["N"]["f1"], abs=1e-4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # The fold's best weights scored it: its figure at the best epoch is the OOF part.
    for i in (1, 2, 3):
        cm = np.asarray(
            json.loads((run / "folds" / f"fold-{i}" / "manifest.json").read_text())["metrics"][
                "val_macro_f1"
            ]
        )
        part = metrics(y[fold == i], proba[fold == i].argmax(axis=1), beats.classes)
        assert part["macro_f1"] == pytest.approx(float(cm), abs=1e-4)

    # The default final model is retrained on the whole split, and the manifest keeps it all.
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["crossval"]["oof"] == oof
    assert manifest["data"]["validation"] is False and (run / "model.safetensors").exists()
    shown = heart("train", *QUICK, "--name", "cv2", "--folds", "2")
    assert "stratified cross-validation" in shown.stdout
    assert "out-of-fold macro-F1" in shown.stdout
    assert "fold 1 of 2: validation stratified beats" in shown.stderr


def test_folds_need_every_class_in_every_fold(heart):
    # at most 100 folds, refused before the data is read
    result = heart("train", *QUICK, "--folds", "101", expect=2)
    assert last_line(result.stderr) == "error: --folds 101: use 2 to 100 folds"
    # every class in every fold: the sample's rarest class, cut to 60 beats, for 61 folds
    from heartcli.errors import UsageError
    from heartcli.training.oof import stratified_folds

    beats = load_split(SAMPLE, "random", "train")
    rarest = min((n, c) for c, n in beats.counts().items() if n)[1]
    k = beats.classes.index(rarest)
    keep = np.concatenate([np.flatnonzero(beats.y != k), np.flatnonzero(beats.y == k)[:60]])
    with pytest.raises(UsageError, match=rf"class {rarest} \(60\) has fewer beats than folds"):
        stratified_folds(beats.subset(np.sort(keep)), 61, 0)


def test_ensemble_final_needs_folds(heart, tmp_path):
    result = heart("train", *QUICK, "--set", 'train.final="ensemble"', expect=2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert 'train.final = "ensemble"' in result.stderr and "--folds K" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_new_examples_are_valid_recipes(heart):
    rhythm = heart.json("config", "show", "--config", EXAMPLES / "mitbih-rhythm.toml")
    beat = heart.json("config", "show", "--config", EXAMPLES / "mitbih.toml")
    assert rhythm["data"]["split"] == "random" and rhythm["model"]["rhythm"] is True
    # the beat-only recipe plus the rhythm keys, nothing else but the label smoothing that
    # the beat-only recipe took later (the rhythm recipe's figures were measured without it)
    assert beat["train"].pop("label_smoothing") == 0.1
    assert rhythm["train"].pop("label_smoothing") == 0.0
    for section in ("resample", "train", "augment"):
        assert rhythm[section] == beat[section]
    search = heart.json("config", "show", "--config", EXAMPLES / "interpatient-search.toml")
    assert search["data"]["split"] == "inter-patient"
    assert search["search"]["folds"] == 3 and search["search"]["pruner"] == "none"
    assert search["search"]["ensemble"] <= search["search"]["evals"]


# --------------------------------------------- moved here from tests/test_rhythm_model.py


def test_kfold_by_record(heart, tmp_path):
    summary = heart.json("train", *QUICK_INTER_PATIENT, "--name", "cv", "--folds", "3")
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
    result = heart("train", *QUICK_INTER_PATIENT, *args, expect=2)
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
