"""`heart tune --jobs 2`: worker processes killed (kill -9 of a worker, then of the search
itself), resume, the report of a running search, and two searches claiming one name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    finish,
    heart_cmd,
    heart_env,
    interrupt,
    make_config,
    mlflow_store,
    read_state,
    start,
    wait_for,
)

from heartcli.config import load_config
from heartcli.search.tpe import Suggester

pytestmark = pytest.mark.slow  # a system test (tests/system): whole processes, slow


def slow(
    tmp_path: Path,
    sample_dir: Path,
    epochs: int,
    patience: int = 50,
    mlflow: bool = True,
    **search: int,
) -> Path:
    """TINY (conftest) on 400 beats a class, ``epochs`` epochs, MLflow on unless ``mlflow``
    is False: 5 trials."""
    if mlflow:
        mlflow_store(tmp_path)
    return make_config(
        tmp_path / "slow.toml",
        data={"dir": str(sample_dir)},
        tracking={"enabled": None if mlflow else False, "experiment": "jobs-test"},
        resample={"target": 400},
        train={"epochs": epochs, "patience": patience, "threads": None},
        search={
            "evals": 5, "seed": 11, "startup_trials": 2, "pruner": "none", **search,
            "space": {
                "train.lr": {"loguniform": [1e-3, 1e-2]},
                "model.dropout": {"uniform": [0.0, 0.3]},
            },
        },
    )  # fmt: skip


def epochs_done(search: Path, number: int) -> int:
    path = search / f"trial-{number:03d}" / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


def running_trial(search: Path, min_epochs: int = 1) -> dict | None:
    for t in read_state(search)["trials"]:
        running = t["status"] == "running" and t["worker"]
        if running and epochs_done(search, t["number"]) >= min_epochs:
            return t
    return None


@pytest.mark.slow
def test_jobs_2_survives_kill_9_of_a_worker_and_of_the_search(tmp_path, sample_dir):
    config = slow(tmp_path, sample_dir, epochs=24)
    search = tmp_path / "runs" / "j"
    proc = start(tmp_path, "tune", "--config", str(config), "--name", "j", "--jobs", "2")
    try:
        # kill -9 of the worker under a running trial: that trial fails, the search goes on.
        victim = wait_for(proc, "a trial to train", lambda: running_trial(search))
        os.kill(victim["worker"], signal.SIGKILL)

        def failed():
            trials = read_state(search)["trials"]
            return next((t for t in trials if t["status"] == "failed"), None)

        dead = wait_for(proc, "the killed trial to be marked failed", failed)
        assert dead["number"] == victim["number"]
        assert dead["reason"] == "the worker process was killed (SIGKILL)"

        # The report of a running search (it is not refused by the search's lock).
        def later():
            trials = read_state(search)["trials"]
            done = [t for t in trials if t["status"] == "completed"]
            return done and running_trial(search, 2)

        wait_for(proc, "a trial to finish and another to run", later)
        report = finish(
            tmp_path, "--json", "tune", "--resume", str(search), "--report", timeout=120
        )
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["running"]
        # A second run of the same search at the same time is refused.
        again = finish(tmp_path, "tune", "--resume", str(search), timeout=120)
        assert again.returncode == 2
        assert again.stderr.strip().endswith(
            f"{search} is in use by another `heart tune`; "
            "wait for it to finish or choose another --name"
        )

        # kill -9 of the search itself: its workers exit at once, nothing else writes.
        wait_for(proc, "a trial to run", lambda: running_trial(search))
        workers = [t["worker"] for t in read_state(search)["trials"] if t["status"] == "running"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 20
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the search"
        time.sleep(0.1)
    before = read_state(search)["trials"]
    assert any(t["status"] == "running" for t in before)

    done = finish(tmp_path, "--json", "tune", "--resume", str(search), "--jobs", "2", timeout=600)
    assert done.returncode == 0, done.stderr
    trials = read_state(search)["trials"]
    assert [t["number"] for t in trials] == [1, 2, 3, 4, 5]
    for old in before:
        new = trials[old["number"] - 1]
        if old["status"] != "running":
            assert new == old  # no finished trial is lost or rerun
        else:
            assert new["vals"] == old["vals"]  # a cut-off trial keeps its point
    assert [t["status"] for t in trials].count("failed") == 1
    assert all(t["status"] == "completed" for t in trials if t["number"] != dead["number"])
    manifest = json.loads((search / f"trial-{dead['number']:03d}" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    # Every point is TPE's suggestion from the trials it knew when it was suggested.
    cfg = load_config(search / "search.toml")
    space = cfg.search.parsed_space()
    for t in trials:
        suggester = Suggester(space, 1, cfg.search.seed, cfg.search.startup_trials)
        for n in t["seen"]:
            seen = trials[n - 1]
            suggester.add(n, seen["vals"], None if seen["metric"] is None else -seen["metric"])
        assert suggester.suggest(t["number"]) == t["vals"]
    # The killed trial's MLflow run is closed as failed, not left running.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jobs-test")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs[f"trial-{dead['number']:03d}"].info.status == "FAILED"
    assert all(r.info.status != "RUNNING" for r in runs.values())


def test_two_searches_with_one_name_at_the_same_moment(tmp_path, sample_dir):
    config = slow(tmp_path, sample_dir, epochs=2, evals=1)
    cmd = heart_cmd("tune", "--config", str(config), "--name", "same")
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=heart_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.strip().splitlines()[-1].startswith("error: runs/same is in use by another")
    trials = read_state(tmp_path / "runs" / "same")["trials"]
    assert [t["status"] for t in trials] == ["completed"]


def test_max_minutes_with_two_jobs_stops_both_trials_at_an_epoch(tmp_path, sample_dir):
    # Trials of 100,000 epochs cannot finish (an idle machine ran 500 in under 30 s); the
    # budget (15 s, the workers' start included) cuts both running trials at the end of an
    # epoch, with their figures kept, and starts no new one.
    config = slow(tmp_path, sample_dir, epochs=100_000, patience=200_000)
    started = time.monotonic()
    proc = subprocess.run(
        heart_cmd(
            "--json",
            "tune",
            "--config",
            str(config),
            "--name",
            "budget",
            "--jobs",
            "2",
            "--max-minutes",
            "0.25",
            "--set",
            "tracking.enabled=false",
        ),
        cwd=tmp_path,
        env=heart_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 300
    result = json.loads(proc.stdout)
    assert result["stopped"] == "max_minutes"
    trials = read_state(tmp_path / "runs" / "budget")["trials"]
    assert [t["number"] for t in trials] == [1, 2]
    for t in trials:
        assert t["status"] == "stopped" and t["metric"] is not None
        assert 1 <= t["epochs_run"] < 100_000
    workers = {t["worker"] for t in trials}
    assert len(workers) == 2  # the two trials ran side by side, one per worker


def test_sigterm_of_a_search_with_two_jobs_stops_cleanly_and_resumes(tmp_path, sample_dir):
    # SIGTERM (a scheduler's stop, `kill`) is Ctrl-C for heart: the workers end their trials
    # as interrupted, with no traceback, and --resume continues them from their checkpoints.
    config = slow(tmp_path, sample_dir, epochs=20, mlflow=False, evals=2)
    search = tmp_path / "runs" / "t"
    proc = start(tmp_path, "tune", "--config", str(config), "--name", "t", "--jobs", "2")
    interrupt(proc, "a trial to train", lambda: running_trial(search, 2))
    stopped = [t for t in read_state(search)["trials"] if t["status"] == "running"]
    assert stopped, "the interrupted trials stay to be resumed"
    kept = {}
    for t in stopped:
        run = search / f"trial-{t['number']:03d}"
        assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
        kept[t["number"]] = (run / "history.csv").read_text()

    resumed = finish(tmp_path, "tune", "--resume", str(search), "--jobs", "2", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    trials = read_state(search)["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"]
    for number, history in kept.items():
        # Resumed from the checkpoint: the epochs before the stop are kept as they were.
        again = (search / f"trial-{number:03d}" / "history.csv").read_text()
        assert again.startswith(history) and len(again) > len(history)
