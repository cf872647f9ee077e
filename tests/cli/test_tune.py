"""`heart tune` end to end on the sample: trials, failures, MLflow, resume after kill -9, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    EXAMPLES,
    cli,
    error_line,
    make_config,
    mlflow_store,
    one_error,
    quick_args,
    sh_order,
)

from heartcli.config import load_config
from heartcli.search.pruners import rungs
from heartcli.search.tpe import Suggester
from heartcli.training.oof import read_oof

REPO = Path(__file__).resolve().parents[2]

# TINY (conftest) searched; the space touches every distribution and the per-layer keys.
# Eight conv layers with max pooling shrink 187 samples to nothing: that trial must fail.
SPACE = {
    "train.lr": {"loguniform": [1e-3, 1e-2]},
    "model.dropout": {"uniform": [0.0, 0.3]},
    "train.batch_size": {"choice": [32, 64]},
    "train.epochs": {"quniform": [1, 2, 1]},
    "model.attention": {"bool": True},
    "model.fc": {"each": [{"quniform": [8, 16, 8]}]},
    "model.conv_layers": {"choice": [1, 2, 8]},
    "model.channels": {"per_layer": {"choice": [4, 8]}},
    "model.kernel_sizes": {"per_layer": {"choice": [3, 5]}},
    "model.pooling": {"per_layer": {"choice": ["max"]}},
}
TRACKED = {"enabled": None, "experiment": "tune-test"}  # MLflow on (the default)


def tiny(tmp_path: Path, sample_dir: Path, seed: int) -> Path:
    mlflow_store(tmp_path)
    return make_config(
        tmp_path,
        data={"dir": str(sample_dir)},
        tracking=TRACKED,
        train={"epochs": 2, "lr": 0.003},
        search={"evals": 3, "seed": seed, "warmup_epochs": 0, "min_trials": 1, "space": SPACE},
    )


def mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tune-test")
    return client.search_runs([exp.experiment_id])


def state(search_dir: Path) -> dict:
    return json.loads((search_dir / "search.json").read_text())


@pytest.mark.slow
def test_tune_end_to_end_with_a_failed_trial(heart, tmp_path, sample_dir):
    # Seed 12 samples 1, 8 and 1 conv layers: the second trial is impossible.
    config = tiny(tmp_path, sample_dir, seed=12)
    result = heart("tune", "--config", config, "--name", "s")
    out = result.stdout
    assert "trial" in out and "failed" in out and "completed" in out
    assert "model.pooling: the conv layers shrink 187 samples to 0" in out
    assert "best: trial-" in out and "next: heart evaluate runs/s/best" in out

    search = tmp_path / "runs" / "s"
    trials = state(search)["trials"]
    assert [t["status"] for t in trials] == ["completed", "failed", "completed"]
    assert trials[1]["params"]["model.conv_layers"] == 8
    assert trials[1]["reason"].startswith("model.pooling: the conv layers shrink 187 samples")
    assert not (search / "trial-002" / "manifest.json").exists()
    for t in (trials[0], trials[2]):
        assert (search / f"trial-{t['number']:03d}" / "model.safetensors").exists()
        assert 0.0 < t["metric"] <= 1.0 and t["epochs_run"] == t["params"]["train.epochs"]
        assert len(t["params"]["model.channels"]) == t["params"]["model.conv_layers"]

    # The best trial is linked twice and its config trains as it is.
    best = max((trials[0], trials[2]), key=lambda t: (t["metric"], -t["number"]))
    assert os.readlink(search / "best") == f"trial-{best['number']:03d}"
    assert (tmp_path / "runs" / "best").resolve() == (search / "best").resolve()
    best_config = load_config(search / "best.toml")
    assert best_config.train.lr == pytest.approx(best["params"]["train.lr"])
    assert best_config.model.channels == best["params"]["model.channels"]
    assert best_config.search.space == {}
    assert "# Best trial of search s: trial-" in (search / "best.toml").read_text()
    # heart evaluate reads the linked run folder: its figures agree with its own confusion
    # matrix over every beat of the sample's test split.
    evaluated = heart.json("evaluate", "runs/best")
    cm = np.array(evaluated["confusion_matrix"])
    assert cm.sum() == len(pd.read_parquet(sample_dir / "random" / "test.parquet"))
    assert evaluated["run"] == "runs/best" and evaluated["split"] == "random"
    assert evaluated["n"] == cm.sum()
    assert evaluated["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert list(evaluated["per_class"]) == ["N", "S", "V", "F", "Q"]
    f1s = []
    for i, name in enumerate(evaluated["per_class"]):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        assert evaluated["per_class"][name]["f1"] == pytest.approx(f1)
        assert evaluated["per_class"][name]["support"] == cm[i, :].sum()
        f1s.append(f1)
    assert evaluated["macro_f1"] == pytest.approx(np.mean(f1s)) and evaluated["macro_f1"] > 0.1

    # One parent MLflow run, a nested child per trial that trained.
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "s"
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_val_macro_f1"] == pytest.approx(best["metric"])
    assert sorted(c.info.run_name for c in children) == ["trial-001", "trial-003"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}

    # --json: the summary only, on stdout.
    summary = heart.json("tune", "--config", config, "--name", "s2", "--evals", "1")
    assert summary["trials"] == 1 and summary["best"]["number"] == 1
    assert summary["best_dir"] == "runs/s2/best"
    assert os.readlink(tmp_path / "runs" / "best") == "s2/trial-001"
    # An existing search is not overwritten.
    again = heart("tune", "--config", config, "--name", "s", expect=2)
    assert "runs/s already exists; choose another --name or continue it with " in again.stderr


@pytest.mark.slow
def test_resume_after_kill_9_keeps_finished_trials(tmp_path, sample_dir):
    # Seed 1 samples 2, 2 and 1 epochs: trial 2 runs long enough to be killed in the middle.
    config = tiny(tmp_path, sample_dir, seed=1)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "heartcli", "tune", "--config", str(config), "--name", "k"]
    search = tmp_path / "runs" / "k"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 180
        while not (search / "trial-002").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "trial 2 never started"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = state(search)["trials"]
    assert [t["status"] for t in before] == ["completed", "running"]
    trial1 = (search / "trial-001" / "manifest.json").read_text()
    trial1_mtime = (search / "trial-001" / "checkpoint.pt").stat().st_mtime_ns

    done = subprocess.run(
        [sys.executable, "-m", "heartcli", "--json", "tune", "--resume", str(search)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["trials"] == 3
    trials = state(search)["trials"]
    assert [t["number"] for t in trials] == [1, 2, 3]
    assert all(t["status"] == "completed" for t in trials)
    # Trial 1 was not rerun; trial 2 kept the point it was given before the kill.
    assert trials[0] == before[0]
    assert trials[1]["vals"] == before[1]["vals"]
    assert (search / "trial-001" / "manifest.json").read_text() == trial1
    assert (search / "trial-001" / "checkpoint.pt").stat().st_mtime_ns == trial1_mtime
    # Every point is the one an uninterrupted search suggests after the same history.
    cfg = load_config(search / "search.toml")
    suggester = Suggester(cfg.search.parsed_space(), 1, cfg.search.seed, 10)
    for t in trials:
        assert suggester.suggest(t["number"]) == t["vals"]
        suggester.add(t["number"], t["vals"], -t["metric"])
    # One MLflow child per trial (trial 2's run was reopened, not duplicated).
    children = [r for r in mlflow_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.info.run_name for c in children) == ["trial-001", "trial-002", "trial-003"]


def test_ray_backend_maps_the_search_keys_onto_rays_schedulers(tmp_path, sample_dir):
    pytest.importorskip("ray")
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from heartcli.search.ray import scheduler

    path = asha_config(tmp_path, sample_dir)
    s = load_config(path, ["search.min_epochs=2", "search.reduction_factor=3"]).search
    asha = scheduler(s, 9, "max")
    assert isinstance(asha, ASHAScheduler)
    assert asha._reduction_factor == 3 and asha._max_t == 10
    # Ray's rungs are heart's: min_epochs x factor^k up to the most epochs (here 2, 6).
    ray_rungs = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    assert ray_rungs == rungs(2, 3, 9) == [2, 6]
    s = load_config(path, ["search.pruner=median", "search.warmup_epochs=2"]).search
    median = scheduler(s, 9, "max")
    assert isinstance(median, MedianStoppingRule)
    assert median._grace_period == 2 and median._min_samples_required == s.min_trials
    assert type(scheduler(load_config(path, ["search.pruner=none"]).search, 9, "max")) is (
        FIFOScheduler
    )


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray at a time (tests/system/test_ray_cluster.py)
def test_ray_backend_on_a_local_instance(heart, tmp_path, sample_dir):
    ray = pytest.importorskip("ray")
    # The same [search] keys as the ASHA test: rungs at 1, 2 and 4 epochs, halving; Ray
    # Tune runs the rungs, then the refit stage (the top 2 on 2 folds) runs on the driver's
    # worker processes.
    config = asha_config(tmp_path, sample_dir, refit=2, folds=2, ensemble="greedy")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = heart.json(
            "tune",
            "--config",
            config,
            "--name",
            "r",
            "--backend",
            "ray",
            "--evals",
            "5",
            "--jobs",
            "1",
        )
    finally:
        ray.shutdown()
    assert summary["trials"] == 5 and summary["jobs"] == 1
    search = tmp_path / "runs" / "r"
    trials = state(search)["trials"]
    assert sorted(t["number"] for t in trials) == [1, 2, 3, 4, 5]
    runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["heart.backend"] == "ray"
    assert parent.data.tags["heart.pruner"] == "asha"
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert len(children) == 5
    for t in trials:
        assert t["status"] in ("completed", "pruned"), t
        folder = search / f"trial-{t['number']:03d}"
        assert (folder / "history.csv").exists() and 0.0 < t["metric"] <= 1.0
        # A trial Ray's scheduler stopped is pruned everywhere, never "failed".
        manifest = json.loads((folder / "manifest.json").read_text())
        run = children[folder.name]
        assert manifest["status"] == run.data.tags["heart.status"] == t["status"]
        assert run.info.status == "FINISHED"
    # Completed trials ran every epoch; pruned ones stopped early.
    assert all(t["epochs_run"] == 4 for t in trials if t["status"] == "completed"), trials
    assert all(t["epochs_run"] < 4 for t in trials if t["status"] == "pruned"), trials
    assert [t["status"] for t in trials].count("pruned") >= 1
    refit = summary["refit"]
    assert refit["order"] == sh_order(summary["records"])[:2]
    for number in refit["order"]:
        assert refit["trials"][str(number)]["refit"] == "completed"
        assert (search / f"trial-{number:03d}" / "model.safetensors").exists()
        oof = read_oof(search / f"trial-{number:03d}")
        assert sorted(set(oof["fold"].tolist())) == [1, 2]
    assert (tmp_path / "runs" / "best").resolve() == (search / "final").resolve()
    assert heart.json("evaluate", search / "final")["n"] > 0


def test_resume_of_a_missing_or_damaged_search_is_one_line(heart, tmp_path):
    search = tmp_path / "s"
    r = heart("tune", "--resume", search, expect=2)
    assert (
        r.stderr.strip() == f"error: {search}: no such search folder; start one with `heart tune`"
    )
    search.mkdir()
    r = heart("tune", "--resume", search, expect=1)
    assert r.stderr.strip() == f"error: {search}: not a heart search (search.json missing)"
    (search / "search.json").write_text('{"format": "heart-search/1", "tri')
    r = heart("tune", "--resume", search, expect=1)
    assert r.stderr.strip() == (
        f"error: {search}/search.json: truncated or unreadable; "
        "the search cannot be resumed; start a new one"
    )
    (search / "search.json").write_text('{"format": "something-else"}')
    r = heart("tune", "--resume", search, expect=1)
    assert (
        r.stderr.strip()
        == f"error: {search}/search.json: not a heart search state (heart-search/1)"
    )


def asha_config(tmp_path: Path, sample_dir: Path, **search: object) -> Path:
    """TINY (conftest), 4 epochs, searched by ASHA: rungs at 1, 2 and 4 epochs, halving."""
    mlflow_store(tmp_path)
    return make_config(
        tmp_path / "asha.toml",
        data={"dir": str(sample_dir)},
        tracking=TRACKED,
        train={"epochs": 4, "patience": 10},
        search={
            "evals": 8, "seed": 3, "pruner": "asha", "min_epochs": 1, "reduction_factor": 2,
            **search,
            "space": {
                "train.lr": {"loguniform": [1e-4, 3e-2]},
                "model.dropout": {"uniform": [0.0, 0.3]},
            },
        },
    )  # fmt: skip


@pytest.mark.slow
def test_asha_stops_trials_at_their_rungs(heart, tmp_path, sample_dir):
    path = asha_config(tmp_path, sample_dir)
    heart("tune", "--config", path, "--name", "a")
    trials = state(tmp_path / "runs" / "a")["trials"]
    assert len(trials) == 8
    # Replay the rule from the values the trials reported, in the order they reported them
    # (one job: trial order): rungs at epochs 1, 2, 4; a trial goes on at a rung only if its
    # value there is not below the median (1 - 1/2 quantile) of the values recorded there.
    recorded: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for t in trials:
        curve = t["curve"]
        expected_status, expected_rungs = "completed", {}
        for rung in (1, 2, 4):
            value = curve[rung - 1]
            cutoff = np.percentile(recorded[rung], 50) if recorded[rung] else None
            recorded[rung].append(value)
            expected_rungs[str(rung)] = value
            if cutoff is not None and value < cutoff and rung < 4:
                expected_status = "pruned"
                break
        assert t["status"] == expected_status, t
        assert t["rungs"] == expected_rungs
        assert t["epochs_run"] == len(curve) == max(int(e) for e in expected_rungs)
        if t["status"] == "pruned":
            assert t["reason"].startswith(f"below the top 1/2 at rung {t['epochs_run']} (")
        # TPE learns from the best value each trial reported, pruned or not.
        assert t["metric"] == pytest.approx(max(curve))
    statuses = [t["status"] for t in trials]
    assert "pruned" in statuses and "completed" in statuses
    # Pruned trials stop at a rung below the last (which rung depends on the values).
    assert {t["epochs_run"] for t in trials if t["status"] == "pruned"} <= {1, 2}
    # The rung history is in each trial's MLflow run too.
    runs = {r.info.run_name: r for r in mlflow_runs(tmp_path)}
    for t in trials:
        run = runs[f"trial-{t['number']:03d}"]
        assert run.data.tags["heart.rung"] == str(t["epochs_run"])
        assert run.data.tags["heart.status"] == t["status"]
        assert run.data.metrics["rung_val_macro_f1"] == pytest.approx(t["curve"][-1])


@pytest.mark.slow
def test_report_of_a_finished_search(heart, tmp_path, sample_dir):
    path = asha_config(tmp_path, sample_dir, evals=4)
    summary = heart.json("tune", "--config", path, "--name", "r")
    search = tmp_path / "runs" / "r"
    trials = state(search)["trials"]
    data = heart.json("tune", "--resume", "runs/r", "--report")
    assert data == summary["report"]  # the same report as at the end of the search
    scored = sorted(trials, key=lambda t: (-t["metric"], t["number"]))
    assert [row["number"] for row in data["top"]] == [t["number"] for t in scored]
    for row, t in zip(data["top"], scored, strict=True):
        assert row["rung"] == max(int(e) for e in t["rungs"])
        assert row["params"] == t["params"] and row["seconds"] == round(t["seconds"], 2)
        assert row["status"] == t["status"] and row["metric"] == t["metric"]
    assert data["rungs"] == [1, 2, 4] and data["running"] == [] and data["trials"] == 4
    assert data["curves"] == {str(t["number"]): t["curve"] for t in trials}
    # Best so far against wall time: one point per trial, in the order they ended.
    best = [p["best"] for p in data["best_so_far"]]
    assert best == sorted(best) and best[-1] == scored[0]["metric"] and len(best) == 4
    png = (search / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The table: one row per trial, best first, with its rung and wall time.
    text = heart("tune", "--resume", "runs/r", "--report").stdout
    lines = [line.split() for line in text.splitlines() if line.strip()[:3].isdigit()]
    assert [int(cells[0]) for cells in lines] == [t["number"] for t in scored]
    assert [cells[3] for cells in lines] == [str(row["rung"]) for row in data["top"]]
    assert "pruner asha; rungs at epochs 1, 2, 4" in text and "runs/r/report.png" in text
    # And in the parent MLflow run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(summary["tracking_run_id"])}
    assert {"report.png", "report.json", "search.json"} <= names


BAD_SEARCH = [
    ("search.pruner=hyperband", "search.pruner: input should be 'none', 'median' or 'asha'"),
    ("search.reduction_factor=1", "search.reduction_factor: input should be greater than or "),
    (
        "search.min_epochs=5",
        "search.min_epochs: 5 is more than any trial's epochs (4); lower search.min_epochs or "
        "raise train.epochs",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_SEARCH)
def test_bad_search_settings_are_one_line(heart, tmp_path, sample_dir, override, message):
    path = asha_config(tmp_path, sample_dir)
    result = heart("tune", "--config", path, "--set", override, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--jobs: 0 is not between 1 and the"),
        ("999", "--jobs: 999 is not between 1 and the"),
        ("two", '--jobs: "two" is not a number; use 1 to'),
    ],
)
def test_bad_jobs_are_one_line(heart, tmp_path, sample_dir, value, message):
    path = asha_config(tmp_path, sample_dir)
    result = heart("tune", "--config", path, "--jobs", value, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "runs").exists()
    result = heart("tune", "--config", path, "--report", expect=2)
    assert result.stderr.strip() == "error: --report: give the search with --resume runs/NAME"


@pytest.mark.slow
def test_tune_drops_classes_as_train_does(heart, tmp_path, sample_dir):
    # [data] classes applies to every trial's folds, as in `heart train` (AAMI: Q dropped).
    heart(
        "-q", "tune", "--name", "noq", "--evals", "2",
        *quick_args("data.split=inter-patient", 'data.classes={Q = "drop"}', data=sample_dir),
    )  # fmt: skip
    search = tmp_path / "runs" / "noq"
    trials = state(search)["trials"]
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    for t in trials:
        manifest = json.loads((search / f"trial-{t['number']:03d}" / "manifest.json").read_text())
        assert manifest["classes"] == ["N", "S", "V", "F"]
        assert manifest["data"]["train_counts"].keys() == {"N", "S", "V", "F"}
    assert heart.json("evaluate", search / "best")["classes"] == ["N", "S", "V", "F"]


def test_a_search_that_cannot_start_is_one_line_and_leaves_its_name_free(heart, tmp_path):
    path = make_config(
        tmp_path, search={"pruner": "none", "evals": 2, "space": {"train.lr": {"choice": [0.01]}}}
    )
    dead = ("--set", "tracking.enabled=true", "--set", 'tracking.uri="http://127.0.0.1:9"')
    r = heart("tune", "--config", path, "--name", "s", *dead, expect=1)
    assert r.stderr.startswith("error: tracking: cannot reach MLflow at http://127.0.0.1:9")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs" / "s").exists()
    folds = ("--set", "data.split=inter-patient", "--set", "search.folds=50")
    r = heart("tune", "--config", path, "--name", "s", *folds, expect=2)
    assert r.stderr.startswith("error: --folds 50:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "s").exists()  # refused before any trial


# --------------------------------------------- moved here from tests/test_hardening.py


def test_unsafe_search_names_are_refused(heart, sample_dir):
    line = error_line(heart("tune", "-n", "a b", expect=None), 2)
    assert line.startswith("error: --name 'a b': a name is one folder name")


# --------------------------------------------- moved here from tests/test_trust.py


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


@pytest.mark.slow
def test_resume_refuses_a_changed_space_and_never_follows_links(tmp_path):
    r = cli("tune", *QUICK, "--evals", "1", "--name", "s", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    search = tmp_path / "runs" / "s"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (search / "trial-002").symlink_to(outside)
    r = cli("tune", "--resume", search, "--evals", "2", cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (outside / "keep.txt").read_text() == "keep"
    trial = json.loads((search / "search.json").read_text())["trials"][1]
    assert trial["status"] == "failed" and "a link" in trial["reason"]
    config = search / "search.toml"
    config.write_text(
        config.read_text().replace(
            "[search.space]", '[search.space]\n"train.weight_decay" = {uniform = [0.0, 0.1]}'
        )
    )
    r = cli("tune", "--resume", search, "--evals", "3", cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert "[search.space] changed since the search started (train.weight_decay)" in one_error(
        r.stderr
    )
    assert len(json.loads((search / "search.json").read_text())["trials"]) == 2


# --------------------------------------------- moved here from tests/test_tune_folds.py


FOLDS = (
    "data.split=inter-patient", 'data.classes={Q = "drop"}', "search.folds=2",
    'search.pruner="none"', "train.epochs=1", "resample.min_beats=5", 'train.scheduler="cosine"',
)  # fmt: skip


@pytest.mark.slow
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
