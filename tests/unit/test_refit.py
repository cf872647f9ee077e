"""`heart tune` with `[search] refit`: rungs, then the top trials on K folds, then what the
search recommends (runs/best), through the CLI on the bundled sample: the refit's
out-of-fold predictions, the greedy ensemble and decision weights chosen by the rule, the
recommended model as one graph in every format, SIGTERM in the refit stage and --resume,
the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import (
    SAMPLE,
    Heart,
    finish,
    interrupt,
    last_line,
    make_config,
    read_state,
    sh_order,
    start,
)

from heartcli.data.dataset import load_split
from heartcli.metrics import metrics
from heartcli.model.inference import model_inputs, torch_proba
from heartcli.model.load import load_run
from heartcli.search import select
from heartcli.training.oof import read_oof, stratified_folds

RHYTHM_SETS = [["rr_pre_local", "rr_post_pre"], ["rr_pre_local", "tpl_rms"]]
# TINY (conftest) searched by successive halving (rungs at 1 and 3 epochs), then the top 3
# trials on 3 folds and the greedy ensemble; the space holds the rhythm columns under a
# `when`, label smoothing and the schedule.
SPACE = {
    "train.lr": {"loguniform": [1e-3, 1e-2]},
    "train.label_smoothing": {"uniform": [0.0, 0.15]},
    "train.epochs": {"choice": [2, 3]},
    "model.rhythm": {
        "bool": True,
        "when": {
            "true": {
                "model.rhythm_columns": {"choice": RHYTHM_SETS},
                "model.rhythm_wide": {"bool": True},
            }
        },
    },
}
SEARCH = {
    "evals": 6, "seed": 3, "startup_trials": 3, "pruner": "asha", "min_epochs": 1,
    "reduction_factor": 3, "refit": 3, "folds": 3, "ensemble": "greedy", "space": SPACE,
}  # fmt: skip


def refit_config(where: Path, **search: object) -> Path:
    return make_config(
        where / "refit.toml", train={"epochs": 3}, search={**SEARCH, **search}
    )  # fmt: skip


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search with rungs, refit and greedy ensemble, two trials at a time (--jobs 2)."""
    root = tmp_path_factory.mktemp("refit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        summary = Heart().json(
            "tune", "--config", refit_config(root), "--name", "s", "--jobs", "2"
        )  # fmt: skip
    return root, summary


@pytest.mark.slow
def test_rungs_then_refit_then_the_recommended_model(searched, heart):
    root, summary = searched
    search = root / "runs" / "s"
    records = summary["records"]
    assert summary["status_counts"].get("pruned", 0) >= 1  # the rungs cut some trials
    # The rhythm columns were drawn only for the trials with rhythm on.
    for r in records:
        assert ("model.rhythm_columns" in r["params"]) == r["params"]["model.rhythm"]
    refit = summary["refit"]
    assert refit["order"] == sh_order(records)[:3]

    beats = load_split(SAMPLE, "random", "train")
    groups = stratified_folds(beats, 3, 42)  # the search's [train] seed
    for number in refit["order"]:
        trial = search / f"trial-{number:03d}"
        entry = refit["trials"][str(number)]
        assert entry["refit"] == "completed"
        assert [entry["folds"][str(i)]["status"] for i in (1, 2, 3)] == ["completed"] * 3
        oof = read_oof(trial)
        # Every training beat once, predicted by the fold model that never trained on it:
        # the same stratified folds for every refitted trial.
        assert np.array_equal(oof["index"], np.arange(len(beats)))
        for i, group in enumerate(groups, start=1):
            assert np.array_equal(np.flatnonzero(oof["fold"] == i), group)
            fold = load_run(trial / "folds" / f"fold-{i}")
            x = beats.subset(group)
            got = torch_proba(fold.model, model_inputs(x.x, x.rhythm, True, "t"))
            np.testing.assert_allclose(oof["proba"][group], got, atol=1e-5)
        figures = metrics(oof["y"], oof["proba"].argmax(1), beats.classes)
        assert entry["oof"]["macro_f1"] == pytest.approx(figures["macro_f1"], abs=1e-4)
        assert entry["oof"]["n"] == len(beats)

    # The recommendation is select.recommend's on those predictions, by the rule.
    final = refit["final"]
    ranked = sorted(refit["order"], key=lambda n: (-refit["trials"][str(n)]["oof"]["macro_f1"], n))
    oofs = [read_oof(search / f"trial-{n:03d}") for n in ranked]
    choice = select.recommend(
        ranked, [o["proba"] for o in oofs], oofs[0]["y"], oofs[0]["fold"], True
    )  # fmt: skip
    assert {m["trial"]: m["weight"] for m in final["members"]} == {
        n: round(w, 4) for n, w in choice.weights.items()
    }
    ens = final["ensemble"]
    kept = ens["macro_f1_cross_fitted"] - ens["best_single_macro_f1"] > 0.002
    assert ens["kept"] == (kept and len(ens["weights"]) > 1)
    assert final["kind"] == ("ensemble" if ens["kept"] else "trial")
    d = final["decision"]
    assert (final["decision_weights"] is not None) == (d["cross_fitted"] - d["plain"] > 0.002)
    expected = metrics(oofs[0]["y"], choice.honest.argmax(1), beats.classes)["macro_f1"]
    assert final["macro_f1"] == pytest.approx(expected, abs=1e-4)

    # runs/best is SEARCH/final: the chosen trials' fold models, weighted share / K.
    assert (root / "runs" / "best").resolve() == (search / "final").resolve()
    assert (search / "best").resolve() == (search / "final").resolve()
    manifest = json.loads((search / "final" / "manifest.json").read_text())
    members = manifest["ensemble"]["members"]
    shares = {m["trial"]: m["weight"] for m in final["members"]}
    assert len(members) == 3 * len(shares)
    for m in members:
        number = int(m["name"].split("/")[0].removeprefix("trial-"))
        assert m["path"] == f"../trial-{number:03d}/folds/{m['name'].split('/')[1]}"
        assert m["weight"] == pytest.approx(shares[number] / 3, abs=1e-4)
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    assert manifest["ensemble"]["oof_macro_f1"] == final["macro_f1"]
    assert "best refitted trial" in (search / "best.toml").read_text().lower()

    # The report says which stage chose what, in JSON and PNG.
    report = json.loads((search / "report.json").read_text())
    assert [r["epoch"] for r in report["rung_table"]] == [1, 3]
    assert report["rung_table"][0]["reached"] == 6
    assert sorted(r["number"] for r in report["refit"]["rows"]) == sorted(refit["order"])
    assert report["refit"]["best_oof_so_far"][-1]["what"] == "final"
    assert (search / "report.png").stat().st_size > 0
    text = heart("tune", "--resume", search, "--report").stdout
    assert "rungs (successive halving)" in text and "refit: top 3 trials on 3 folds" in text
    assert f"out-of-fold macro-F1 {final['macro_f1']:.4f} (95% CI" in " ".join(text.split())

    # The test part is read once, by `heart evaluate` of what the search recommends.
    result = heart.json("evaluate", root / "runs" / "best")
    assert result["n"] == len(load_split(SAMPLE, "random", "test"))


def member_probas(ensemble: Path, test) -> tuple[np.ndarray, np.ndarray]:
    """The members' probabilities on ``test`` and their weights, from the manifest."""
    manifest = json.loads((ensemble / "manifest.json").read_text())
    probas, weights = [], []
    for m in manifest["ensemble"]["members"]:
        member = load_run((ensemble / m["path"]).resolve())
        probas.append(torch_proba(member.model, model_inputs(test.x, test.rhythm, True, "t")))
        weights.append(m["weight"])
    return np.stack(probas), np.array(weights)


@pytest.mark.slow
def test_a_weighted_ensemble_with_decision_weights_is_one_model_in_every_format(
    searched, heart, tmp_path
):
    root, summary = searched
    search = root / "runs" / "s"
    from heartcli.model.ensemble import write_ensemble

    # Two refitted trials' fold models, weighted 0.7 / 0.3 between the trials, with
    # decision weights: what SEARCH/final holds when the rule keeps both.
    a, b = summary["refit"]["order"][:2]
    folds = [(n, i) for n in (a, b) for i in (1, 2, 3)]
    ens = search / "weighted"
    decision = {"N": 1.0, "S": 2.5, "V": 0.6, "F": 3.0, "Q": 1.2}
    write_ensemble(
        ens,
        [(f"trial-{n:03d}/fold-{i}", search / f"trial-{n:03d}" / "folds" / f"fold-{i}")
         for n, i in folds],
        (search / f"trial-{a:03d}" / "config.toml").read_text(),
        source="a test", scores={}, weights=[0.7 / 3] * 3 + [0.3 / 3] * 3, decision=decision,
    )  # fmt: skip
    test = load_split(SAMPLE, "random", "test")
    probas, weights = member_probas(ens, test)
    assert not np.allclose(probas[0], probas[3], atol=1e-3)  # the members differ
    mean = np.tensordot(weights, probas, axes=1)
    scaled = mean * np.array([decision[c] for c in test.classes])
    expected = scaled / scaled.sum(axis=1, keepdims=True)
    assert (expected.argmax(1) != mean.argmax(1)).any()  # the decision weights decide

    run = load_run(ens)
    np.testing.assert_allclose(
        torch_proba(run.model, model_inputs(test.x, test.rhythm, True, "t")), expected, atol=1e-6
    )
    out = tmp_path / "pred.csv"
    heart("-q", "predict", ens, SAMPLE / "random" / "test.parquet", "--out", out)
    table = pd.read_csv(out)
    for i, c in enumerate(test.classes):
        np.testing.assert_allclose(table[f"p_{c}"], expected[:, i], atol=1e-5)
    assert heart.json("evaluate", ens)["accuracy"] == pytest.approx(
        float((expected.argmax(1) == test.y).mean())
    )
    export = tmp_path / "export"
    heart("-q", "export", ens, "--format", "all", "--format", "pte", "--out", export)
    outputs = export_outputs(export, test)
    assert sorted(outputs) == ["onnx", "pt2", "pte", "torchscript"]
    for name, got in outputs.items():
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    card = json.loads((export / "model_card.json").read_text())
    assert card["ensemble"]["decision_weights"] == decision
    markdown = (export / "MODEL_CARD.md").read_text()
    assert "Decision weights" in markdown and "| 0.2333 |" in markdown


def export_outputs(export: Path, test) -> dict[str, np.ndarray]:
    """Every exported file's probabilities on the test beats, by format."""
    from heartcli.export.pte import pte_runner

    x, r = test.x.astype(np.float32), test.rhythm.astype(np.float32)
    tx, tr = torch.from_numpy(x), torch.from_numpy(r)
    outputs = {}
    if (export / "model.onnx").exists():
        providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(export / "model.onnx"), providers=providers)
        outputs["onnx"] = session.run(None, {"beats": x, "rhythm": r})[0]
    with torch.no_grad():
        if (export / "model.pt2").exists():
            outputs["pt2"] = torch.export.load(str(export / "model.pt2")).module()(tx, tr).numpy()
        if (export / "model.torchscript.pt").exists():
            script = torch.jit.load(str(export / "model.torchscript.pt"))
            outputs["torchscript"] = script(tx, tr).numpy()
    if (export / "model.pte").exists():
        outputs["pte"] = pte_runner(export / "model.pte")(x, r)
    return outputs


@pytest.mark.slow
def test_the_recommended_model_exports_as_the_weighted_mean(searched, heart, tmp_path):
    root, _ = searched
    final = root / "runs" / "s" / "final"
    test = load_split(SAMPLE, "random", "test")
    probas, weights = member_probas(final, test)
    mean = np.tensordot(weights, probas, axes=1)
    manifest = json.loads((final / "manifest.json").read_text())
    decision = manifest["ensemble"].get("decision_weights")
    if decision:
        mean = mean * np.array([decision[c] for c in test.classes])
        mean /= mean.sum(axis=1, keepdims=True)
    # ONNX: every other format of a weighted ensemble with decision weights is the test
    # above's (tracing nine members for .pt2 and .pte took half a minute each)
    export = tmp_path / "export"
    heart("-q", "export", root / "runs" / "best", "--format", "onnx", "--out", export)
    outputs = export_outputs(export, test)
    assert sorted(outputs) == ["onnx"]
    for name, got in outputs.items():
        np.testing.assert_allclose(got, mean, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_a_lost_fold_folder_is_one_line_and_loses_nothing(searched, heart, tmp_path):
    root, summary = searched
    search = tmp_path / "s"
    shutil.copytree(root / "runs" / "s", search, symlinks=True)
    number = summary["refit"]["order"][0]
    lost = search / f"trial-{number:03d}" / "folds" / "fold-2"
    shutil.rmtree(lost)
    before = (search / "search.json").read_text()
    result = heart("tune", "--resume", search, expect=1)
    assert result.stderr.strip().splitlines() == [
        f"error: {lost}: a fold the refit stage finished is gone (model.safetensors missing); "
        "heart never trains a finished fold again: restore the folder, or start the search "
        "again under a new --name"
    ]
    assert (search / "search.json").read_text() == before
    assert (search / f"trial-{number:03d}" / "folds" / "fold-1" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_resumed_finished_search_trains_nothing_again(searched, heart, tmp_path):
    root, summary = searched
    search = tmp_path / "s"
    shutil.copytree(root / "runs" / "s", search, symlinks=True)
    weights = sorted(search.glob("trial-*/folds/fold-*/model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    again = heart.json("tune", "--resume", search)
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    assert again["refit"]["final"]["members"] == summary["refit"]["final"]["members"]
    assert again["refit"]["final"]["macro_f1"] == summary["refit"]["final"]["macro_f1"]


@pytest.mark.slow
def test_sigterm_in_the_refit_stage_then_resume_trains_no_finished_fold_again(tmp_path):
    # Two trials of 10 epochs each (no pruning), both refitted on 3 folds, one fold at a
    # time: SIGTERM once a fold has finished and the next one has trained an epoch.
    config = make_config(
        tmp_path / "slow.toml",
        resample={"target": 400},
        train={"epochs": 10, "patience": 50},
        search={
            "evals": 2, "seed": 5, "startup_trials": 2, "pruner": "none", "refit": 2,
            "folds": 3, "ensemble": "greedy",
            "space": {"train.lr": {"loguniform": [1e-3, 1e-2]}},
        },
    )  # fmt: skip
    search = tmp_path / "runs" / "t"

    def fold_state() -> tuple[list, list] | None:
        book = read_state(search).get("refit") or {}
        folds = [
            (int(n), int(i), f)
            for n, e in (book.get("trials") or {}).items()
            for i, f in e["folds"].items()
        ]
        done = [(n, i) for n, i, f in folds if f["status"] == "completed"]
        going = [
            (n, i) for n, i, f in folds
            if f["status"] == "running" and epochs(search, n, i) >= 1
        ]  # fmt: skip
        return (done, going) if done and going else None

    proc = start(tmp_path, "tune", "--config", str(config), "--name", "t", "--jobs", "1")
    (done, going), _ = interrupt(proc, "a fold to finish and the next to train", fold_state)
    assert not (search / "final").exists()
    kept = {f: fold_files(search, *f) for f in done}
    n, i = going[0]
    history = (search / f"trial-{n:03d}" / "folds" / f"fold-{i}" / "history.csv").read_text()

    resumed = finish(tmp_path, "tune", "--resume", str(search), "--jobs", "1", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for fold, files in kept.items():
        assert fold_files(search, *fold) == files  # never trained again
    again = (search / f"trial-{n:03d}" / "folds" / f"fold-{i}" / "history.csv").read_text()
    assert again.startswith(history) and len(again) > len(history)  # from its checkpoint
    book = read_state(search)["refit"]
    assert all(book["trials"][str(t)]["refit"] == "completed" for t in book["order"])
    assert (search / "final" / "manifest.json").exists()
    assert (tmp_path / "runs" / "best").resolve() == (search / "final").resolve()


def epochs(search: Path, number: int, fold: int) -> int:
    path = search / f"trial-{number:03d}" / "folds" / f"fold-{fold}" / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def fold_files(search: Path, number: int, fold: int) -> dict[str, tuple[int, bytes]]:
    where = search / f"trial-{number:03d}" / "folds" / f"fold-{fold}"
    return {
        name: ((where / name).stat().st_mtime_ns, (where / name).read_bytes())
        for name in ("model.safetensors", "history.csv", "oof.npz", "checkpoint.pt")
    }


BAD = [
    (
        {"refit": 7},
        "error: search.refit = 7: the search runs 6 trials; lower search.refit to at most 6, "
        "or raise search.evals (--evals)",
    ),
    (
        {"refit": 0},
        'error: search.ensemble = "greedy" chooses among the refitted trials, and '
        "search.refit = 0 refits none; set search.refit to 2 or more (with search.folds = K), "
        "or search.ensemble = 0",
    ),
    (
        {"folds": 1},
        "error: search.folds = 1: search.refit = 3 trains each trial again on K folds; set "
        "search.folds to 2 or more (e.g. 3)",
    ),
    (
        {"folds": 0},
        "error: search.folds = 0: search.refit = 3 trains each trial again on K folds; set "
        "search.folds to 2 or more (e.g. 3)",
    ),
    (
        {"ensemble": 2},
        "error: search.ensemble = 2 averages the top trials as they are; with search.refit "
        'use search.ensemble = "greedy" (weights chosen out of fold) or 0',
    ),
    (
        {"space": {**SPACE, "data.split": {"choice": ["random", "inter-patient"]}}},
        "error: search.refit: the space changes the data (data.split), so the refitted "
        "trials would predict different beats; take data keys out of the space, or set "
        "search.refit = 0",
    ),
]


@pytest.mark.parametrize(("search", "line"), BAD)
def test_bad_refit_settings_are_one_line(heart, tmp_path, search, line):
    result = heart("tune", "--config", refit_config(tmp_path, **search), "--name", "x", expect=2)
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "runs" / "x").exists()


def test_refit_above_the_evals_of_the_command_line_is_refused(heart, tmp_path):
    config = refit_config(tmp_path)
    result = heart("tune", "--config", config, "--evals", "2", "--name", "x", expect=2)
    assert last_line(result.stderr) == (
        "error: search.refit = 3: the search runs 2 trials; lower search.refit to at most 2, "
        "or raise search.evals (--evals)"
    )
    assert not (tmp_path / "runs" / "x").exists()


def test_a_key_under_a_choice_that_does_not_exist_is_one_line(heart, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        "[train]\nepochs = 2\n\n[search.space]\n"
        '"train.lr" = {loguniform = [1e-3, 1e-2]}\n'
        '"model.rhythm" = {bool = true, when = {yes = {"model.rhythm_wide" = {bool = true}}}}\n'
    )
    result = heart("tune", "--config", path, expect=2)
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:6 search.space.model.rhythm: when.yes: model.rhythm has no choice "
        '"yes" (its choices: false, true)'
    ]


def test_keys_under_a_when_are_drawn_only_with_their_option(tmp_path):
    from heartcli.config import load_config
    from heartcli.search.tpe import Suggester

    config = load_config(refit_config(tmp_path))
    space = config.search.parsed_space()
    assert space.keys == [
        "train.lr", "train.label_smoothing", "train.epochs", "model.rhythm",
        "model.rhythm_columns", "model.rhythm_wide",
    ]  # fmt: skip
    suggester = Suggester(space, 1, seed=7, startup_trials=3)
    seen = set()
    for number in range(1, 25):
        vals = suggester.suggest(number)
        values = suggester.values(vals)
        on = values["model.rhythm"]
        seen.add(on)
        # The option is a plain choice's index; its keys carry the branch in their label.
        assert vals["model.rhythm"] == [int(on)]
        assert bool(vals["model.rhythm_columns|model.rhythm=true"]) == on
        assert ("model.rhythm_columns" in values) == on == ("model.rhythm_wide" in values)
        if on:
            assert values["model.rhythm_columns"] in RHYTHM_SETS
        suggester.add(number, vals, -values["train.lr"])
    assert seen == {False, True}


def test_greedy_selection_with_replacement_keeps_the_best_prefix():
    # Three candidates on six beats of two classes, each wrong on two beats of its own
    # (mildly: 0.4 / 0.6), so any two of them averaged are right on every beat.
    y = np.array([0, 0, 0, 1, 1, 1])

    def candidate(mistakes: set[int]) -> np.ndarray:
        rows = []
        for i in range(6):
            p = 0.4 if i in mistakes else 0.9  # the probability of the true class
            rows.append([p, 1 - p] if y[i] == 0 else [1 - p, p])
        return np.array(rows)

    probas = [candidate({0, 3}), candidate({1, 4}), candidate({2, 5})]
    chosen = select.greedy(probas, y, rounds=6)
    # Round 1: the first candidate (ties go to the earlier one); round 2 adds the second,
    # and the pair is perfect; the later rounds tie with it, so the prefix of 2 is kept.
    assert chosen.trace[0] == pytest.approx(select.macro_f1(y, probas[0]))
    assert chosen.trace[1] == 1.0 and chosen.kept == 2
    np.testing.assert_allclose(chosen.weights, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(chosen.mix(probas), (probas[0] + probas[1]) / 2)
    # With replacement: a candidate right everywhere is picked again every round, and the
    # kept prefix is its first round alone.
    best = select.greedy([probas[0], np.eye(2)[y] * 0.8 + 0.1], y, rounds=4)
    assert best.trace == [1.0] * 4 and best.kept == 1 and list(best.weights) == [0.0, 1.0]
