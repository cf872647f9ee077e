"""Ensembles as one model: `heart train --folds K` with train.final = "ensemble" and
`heart tune` with [search] ensemble = k; evaluate, predict and export treat an ensemble as
one model, whose probabilities are the mean of its members' on real beats (the bundled
sample), in PyTorch and in every export format; a missing or changed member is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SAMPLE, Heart, last_line, quick_args

from heartcli.data.dataset import load_split
from heartcli.model.inference import model_inputs, torch_proba
from heartcli.model.load import load_run

# The quick-start CNN on the sample (conftest), 150 beats a class, every class kept, cosine.
QUICK = quick_args("resample.target=150", "resample.min_beats=1", "train.scheduler=cosine")
RHYTHM = (
    "--set", "model.rhythm=true", "--set", 'model.rhythm_columns=["rr_pre_local", "tpl_rms"]',
    "--set", "model.rhythm_wide=true",
)  # fmt: skip


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A 3-fold ensemble of tiny rhythm models (beats and rhythm in), exported in every
    format; the random split's real test beats."""

    root = tmp_path_factory.mktemp("ensemble")
    heart = Heart()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        summary = heart.json(
            "train", *QUICK, *RHYTHM, "--name", "ens", "--folds", "3",
            "--set", 'train.final="ensemble"',
        )  # fmt: skip
        heart("-q", "export", root / "runs" / "ens", "--format", "all", "--out", root / "export")
    return root, summary


def members_mean(run_dir, beats):
    probas = []
    for i in (1, 2, 3):
        member = load_run(run_dir / "folds" / f"fold-{i}")
        probas.append(torch_proba(member.model, model_inputs(beats.x, beats.rhythm, True, "t")))
    return np.mean(probas, axis=0), probas


@pytest.mark.slow
def test_ensemble_is_the_mean_of_its_members(ensemble, heart):
    root, summary = ensemble
    run_dir = root / "runs" / "ens"
    test = load_split(SAMPLE, "random", "test")
    mean, probas = members_mean(run_dir, test)
    assert not np.allclose(probas[0], probas[1], atol=1e-3)  # members differ

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [m["name"] for m in manifest["ensemble"]["members"]] == ["fold-1", "fold-2", "fold-3"]
    assert manifest["ensemble"]["members"][0]["path"] == "folds/fold-1"
    assert manifest["ensemble"]["oof_macro_f1"] == summary["oof"]["macro_f1"]
    assert not (run_dir / "model.safetensors").exists()  # no retrained model
    assert summary["final"]["epochs_run"] == 0

    # PyTorch: the run loads as one module.
    run = load_run(run_dir)
    got = torch_proba(run.model, model_inputs(test.x, test.rhythm, True, "t"))
    np.testing.assert_allclose(got, mean, atol=1e-6)

    # heart evaluate scores the mean's argmax.
    result = heart.json("evaluate", run_dir)
    assert result["n"] == len(test)
    assert result["accuracy"] == pytest.approx(float((mean.argmax(1) == test.y).mean()))

    # heart predict on the test file gives the mean probabilities.
    out = root / "pred.parquet"
    heart.json("predict", run_dir, SAMPLE / "random" / "test.parquet", "--out", out)
    table = pq.read_table(out).to_pandas()
    for i, c in enumerate(test.classes):
        np.testing.assert_allclose(table[f"p_{c}"], mean[:, i], atol=1e-5)


@pytest.mark.slow
def test_every_export_format_holds_one_averaging_graph(ensemble):
    root, _ = ensemble
    export = root / "export"
    test = load_split(SAMPLE, "random", "test")
    mean, _ = members_mean(root / "runs" / "ens", test)
    x, r = test.x.astype(np.float32), test.rhythm.astype(np.float32)

    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"beats": x, "rhythm": r})[0]
    np.testing.assert_allclose(onnx, mean, atol=1e-5)
    program = torch.export.load(str(export / "model.pt2")).module()
    with torch.no_grad():
        pt2 = program(torch.from_numpy(x), torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(pt2, mean, atol=1e-5)
    script = torch.jit.load(str(export / "model.torchscript.pt"))
    with torch.no_grad():
        ts = script(torch.from_numpy(x), torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(ts, mean, atol=1e-5)

    card = json.loads((export / "model_card.json").read_text())
    assert [m["name"] for m in card["ensemble"]["members"]] == ["fold-1", "fold-2", "fold-3"]
    assert all(f["parity"]["argmax_disagreements"] == 0 for f in card["files"])
    markdown = (export / "MODEL_CARD.md").read_text()
    assert "## Ensemble" in markdown and "| fold-2 | `folds/fold-2` |" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_missing_or_changed_member_is_refused_by_name(ensemble, heart, tmp_path, damage):
    root, _ = ensemble
    run_dir = tmp_path / "ens"
    shutil.copytree(root / "runs" / "ens", run_dir)
    (run_dir / "eval.json").unlink(missing_ok=True)  # an earlier test's
    weights = run_dir / "folds" / "fold-2" / "model.safetensors"
    if damage == "missing":
        shutil.rmtree(weights.parent)
    else:
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = state[name] + 0.01
        save_file(state, str(weights), metadata={"format": "heart-run/1"})
    expected = "ensemble member fold-2 " + ("is missing" if damage == "missing" else "changed")
    for args in (
        ("evaluate", run_dir),
        ("export", run_dir, "--out", tmp_path / "x"),
        ("predict", run_dir, SAMPLE / "random" / "test.parquet"),
    ):
        result = heart(*args, expect=1)
        assert last_line(result.stderr).startswith("error: ")
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (run_dir / "eval.json").exists()


SEARCH = (
    "--set", "search.pruner=none", "--set", "search.evals=3", "--set", "search.folds=2",
    "--set", 'search.space={"train.lr" = {loguniform = [1e-3, 1e-2]}}',
)  # fmt: skip


def trial_oofs(search, numbers):
    """The out-of-fold predictions (index, fold, y, proba) of the search's trials."""
    from heartcli.training.oof import read_oof

    oofs = [read_oof(search / f"trial-{n:03d}") for n in numbers]
    assert all(o is not None for o in oofs)
    return oofs


def macro_f1_of_mean(oofs, classes):
    """Macro-F1 of the mean of the trials' out-of-fold probabilities, beat by beat."""
    from heartcli.metrics import metrics

    mean = np.mean([o["proba"] for o in oofs], axis=0)
    return metrics(oofs[0]["y"], mean.argmax(1), classes)["macro_f1"]


@pytest.mark.slow
def test_tune_ensembles_its_top_trials_out_of_fold(heart, tmp_path):
    summary = heart.json("tune", *QUICK, *SEARCH, "--set", "search.ensemble=2", "--name", "s")
    info = summary["ensemble"]
    trials = sorted(
        (r for r in summary["records"] if r["status"] == "completed"),
        key=lambda r: (-r["metric"], r["number"]),
    )
    assert info["members"] == [t["number"] for t in trials[:2]]
    assert info["scored_on"] == "out-of-fold"
    # The score is the mean of the two trials' out-of-fold probabilities, on every beat.
    oofs = trial_oofs(tmp_path / "runs" / "s", [t["number"] for t in trials[:2]])
    beats = load_split(SAMPLE, "random", "train")
    assert info["macro_f1"] == pytest.approx(macro_f1_of_mean(oofs, beats.classes), abs=1e-4)
    assert info["n"] == len(beats)
    ens = tmp_path / "runs" / "s" / "ensemble"
    manifest = json.loads((ens / "manifest.json").read_text())
    assert [m["path"] for m in manifest["ensemble"]["members"]] == [
        f"../trial-{t['number']:03d}" for t in trials[:2]
    ]
    result = heart.json("evaluate", ens)  # test read once, by evaluate, on the final model
    assert result["n"] == len(load_split(SAMPLE, "random", "test"))


def test_tune_ensemble_larger_than_the_trials_is_refused(heart, tmp_path):
    result = heart("tune", *QUICK, *SEARCH, "--set", "search.ensemble=4", "--name", "s", expect=2)
    line = last_line(result.stderr)
    assert line == (
        "error: search.ensemble = 4: the search runs 3 trials; lower search.ensemble to at "
        "most 3, or raise search.evals"
    )
    assert not (tmp_path / "runs" / "s").exists()


def test_tune_ensemble_on_the_validation_fold(heart, tmp_path):
    search = (
        "--set", "search.pruner=none", "--set", "search.evals=2", "--set", "search.ensemble=2",
        "--set", 'search.space={"train.lr" = {loguniform = [1e-3, 1e-2]}}',
    )  # fmt: skip
    info = heart.json("tune", *QUICK, *search, "--name", "v")["ensemble"]
    from heartcli.config import load_config
    from heartcli.metrics import metrics
    from heartcli.training.folds import split_validation

    config = load_config(tmp_path / "runs" / "v" / "search.toml")
    beats = load_split(SAMPLE, "random", "train")
    _, val_idx = split_validation(config, beats)
    val = beats.subset(val_idx)
    mean = np.mean(
        [
            torch_proba(load_run(tmp_path / "runs" / "v" / f"trial-{n:03d}").model, [val.x])
            for n in info["members"]
        ],
        axis=0,
    )
    assert info["scored_on"] == "validation" and info["n"] == len(val)
    assert sorted(info["members"]) == [1, 2]
    expected = metrics(val.y, mean.argmax(1), beats.classes)["macro_f1"]
    assert info["macro_f1"] == pytest.approx(expected, abs=1e-4)


def test_tune_ensemble_with_too_few_finished_trials_is_refused(heart, tmp_path):
    result = heart(
        "tune", *QUICK, *SEARCH, "--set", "search.ensemble=2", "--max-minutes", "0.0001",
        "--name", "s", expect=2,
    )  # fmt: skip
    assert last_line(result.stderr) == (
        "error: search.ensemble = 2: only 0 trials finished unpruned; lower search.ensemble, "
        "or continue the search with `heart tune --resume`"
    )
    assert (tmp_path / "runs" / "s" / "search.json").exists()  # the search itself is kept
    assert not (tmp_path / "runs" / "s" / "ensemble").exists()


@pytest.mark.slow
def test_a_seed_ensemble_is_scored_on_every_beat_out_of_fold(heart, tmp_path):
    # [search] ensemble over a train.seed space: each trial deals its own folds from its
    # seed, every beat is still predicted by a model that never trained on it, so the
    # ensemble's score is the mean of the seeds' out-of-fold probabilities, beat by beat.
    seeds = (
        "--set", "search.pruner=none", "--set", "search.evals=2", "--set", "search.folds=2",
        "--set", "search.startup_trials=2", "--set", "search.ensemble=2",
        "--set", 'search.space={"train.seed" = {quniform = [1, 100000, 1]}}',
    )  # fmt: skip
    summary = heart.json("tune", *QUICK, *seeds, "--name", "s")
    search = tmp_path / "runs" / "s"
    params = [r["params"]["train.seed"] for r in summary["records"]]
    assert params[0] != params[1]
    oofs = trial_oofs(search, [1, 2])
    assert np.array_equal(oofs[0]["index"], oofs[1]["index"])  # the same beats
    assert not np.array_equal(oofs[0]["fold"], oofs[1]["fold"])  # dealt by each seed
    beats = load_split(SAMPLE, "random", "train")
    expected = macro_f1_of_mean(oofs, beats.classes)
    assert summary["ensemble"]["macro_f1"] == pytest.approx(expected, abs=1e-4)
    assert summary["ensemble"]["n"] == len(beats)


def test_a_hand_edited_ensemble_manifest_is_one_line(heart, trained_run, tmp_path):
    """`members` a number, `ensemble` a string, a member that is the ensemble itself."""
    run_dir = tmp_path / "runs" / "ens"
    shutil.copytree(trained_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    member = {"name": "self", "path": ".", "weights_sha256": "0" * 64, "config_sha256": "0" * 64}
    for ensemble, expected in (
        ({"members": 5}, "ensemble is not a table listing its members"),
        ("folds", "ensemble is not a table listing its members"),
        ({"members": [5]}, "ensemble.members holds an entry that is not a member"),
        ({"members": [member]}, "changed on disk"),
    ):
        (run_dir / "manifest.json").write_text(json.dumps({**manifest, "ensemble": ensemble}))
        for args in (
            ("evaluate", run_dir),
            ("predict", run_dir, SAMPLE / "random" / "test.parquet"),
        ):
            r = heart(*args, expect=1)
            assert expected in last_line(r.stderr) and len(r.stderr.strip().splitlines()) == 1
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "input_length": "187"}))
    r = heart("evaluate", run_dir, expect=1)
    assert "input_length is not a number of samples" in r.stderr
