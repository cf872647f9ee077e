"""`[search] folds`: `heart tune` selecting on record-wise K-fold cross-validation (DS1 of the
sample's inter-patient split), through the CLI, with a real MLflow store."""

from __future__ import annotations

import json

import numpy as np
from conftest import EXAMPLES, quick_args

FOLDS = (
    "data.split=inter-patient", 'data.classes={Q = "drop"}', "search.folds=2",
    'search.pruner="none"', "train.epochs=1", "resample.min_beats=5", 'train.scheduler="cosine"',
)  # fmt: skip


def test_tune_selects_on_the_folds_mean(heart, tmp_path, sample_dir):
    heart(
        "-q", "tune", "--name", "cv", "--evals", "2",
        *quick_args(*FOLDS, data=sample_dir, tracking=True),
    )  # fmt: skip
    search = tmp_path / "runs" / "cv"
    trials = json.loads((search / "search.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"]
    for t in trials:
        trial = search / f"trial-{t['number']:03d}"
        manifest = json.loads((trial / "manifest.json").read_text())
        folds = manifest["crossval"]["folds"]
        # Two folds of whole records, none on both sides; the trial's value is their mean.
        assert len(folds) == 2
        assert not set(folds[0]["val_records"]) & set(folds[1]["val_records"])
        assert t["metric"] == manifest["crossval"]["figures"]["macro_f1"]["mean"]
        # The folds' figures are stored to 4 digits: their mean is within one rounding step.
        assert abs(t["metric"] - np.mean([f["macro_f1"] for f in folds])) <= 1e-4
        assert (trial / "folds" / "fold-1" / "model.safetensors").exists()
        # The final model trained on every DS1 record, without a validation fold.
        assert manifest["data"]["val_records"] == []
    best = max(trials, key=lambda t: t["metric"])
    assert (search / "best").resolve().name == f"trial-{best['number']:03d}"
    assert heart.json("evaluate", search / "best")["classes"] == ["N", "S", "V", "F"]

    # One MLflow run per trial (the final model's), nested in the search, with the folds'
    # figures; the fold runs are not logged on their own.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 2
    by_name = {r.info.run_name: r for r in children}
    for t in trials:
        metrics = by_name[f"trial-{t['number']:03d}"].data.metrics
        assert round(metrics["cv_macro_f1_mean"], 4) == t["metric"]
        assert "cv_sveb_se_mean" in metrics and "cv_macro_f1_std" in metrics


def test_tune_folds_bad_input(heart, sample_dir):
    base = ("tune", "--config", EXAMPLES / "quickstart.toml", "--set", f"data.dir={sample_dir}")
    for extra, line in [
        (
            ("--set", "search.folds=1"),
            "error: search.folds: 1 fold is no cross-validation; use 0 (off) or 2 or more",
        ),
        (
            ("--set", "search.folds=3", "--set", 'search.pruner="asha"'),
            'error: search.folds = 3 needs search.pruner = "none": a trial\'s folds train one '
            'after another, so there is no single curve for "asha" to cut',
        ),
        (
            (
                "--set",
                "search.folds=3",
                "--set",
                'search.pruner="none"',
                "--set",
                'search.metric="val_loss"',
            ),
            "error: search.folds = 3 selects on the folds' mean macro-F1; set search.metric = "
            '"val_macro_f1" (got "val_loss")',
        ),
        (
            ("--set", "search.folds=2", "--set", 'search.pruner="none"', "--backend", "ray"),
            "error: search.folds runs on the hyperopt backend (a Ray trial trains one fold); "
            "use --backend hyperopt, or search.folds = 0 on Ray",
        ),
    ]:
        result = heart(*base, *extra, expect=2)
        assert result.stderr.strip() == line
