"""Whole `heart` processes at once or stopped: two at the same moment, SIGTERM, SIGKILL,
stopped workers and named pipes; each test runs `heart` in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MITDB, SAMPLE, cli, one_error, quick_args

pytestmark = pytest.mark.slow  # a system test (tests/system): whole processes, slow

# --------------------------------------------- moved here from tests/test_faults.py


HEART = [sys.executable, "-m", "heartcli"]


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def spawn(cwd: Path, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [*HEART, *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def digests(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".heart-build-" not in str(p)
    }


def test_two_runs_with_the_same_name_at_once_one_wins(tmp_path, sample_dir):
    """Both start before either has created runs/race; exactly one may train into it."""
    procs = [
        spawn(tmp_path, "--json", "train", *quick(sample_dir), "--name", "race") for _ in range(2)
    ]
    done = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in done)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in done]
    winner = next(out for p, out, _ in done if p.returncode == 0)
    loser_out, loser_err = next((out, err) for p, out, err in done if p.returncode == 2)
    assert "name is in use" in loser_err
    assert len(loser_err.strip().splitlines()) == 1
    assert json.loads(loser_out)["exit_code"] == 2
    run = tmp_path / "runs" / "race"
    summary = json.loads(winner)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    # config, manifest, history and checkpoint all belong to the one run that won
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + summary["epochs_run"]
    assert manifest["config_sha256"]


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, sample_dir):
    proc = spawn(
        tmp_path, "train", *quick(sample_dir, "train.epochs=200", "train.patience=200"), "-n", "t"
    )
    history = tmp_path / "runs" / "t" / "history.csv"
    deadline = time.monotonic() + 300
    while not history.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert history.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    manifest = json.loads((tmp_path / "runs" / "t" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"


def test_a_build_killed_with_sigkill_leaves_no_staging_folder_behind(
    heart, mitdb_dir, mitbih, tmp_path
):
    out = Path(shutil.copytree(mitbih, tmp_path / "d"))  # the session's build
    before = digests(out)
    proc = spawn(
        tmp_path, "-q", "fetch", "--source", mitdb_dir, "--out", out, "--set", "data.seed=7"
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.glob(".heart-build-*/*")):
            break
        time.sleep(0.05)
    staging = list(out.glob(".heart-build-*"))
    assert staging, "the build finished before it could be killed"
    # a running build's staging folder is left alone by another fetch's clean-up
    from heartcli.data.build import clean_stale_staging

    assert clean_stale_staging(out) == []
    proc.kill()
    proc.communicate()
    assert staging[0].exists()
    assert digests(out) == before  # killed while staging: the dataset is untouched
    # the next fetch finds the old dataset up to date, and removes the dead build's folder
    assert heart.json("fetch", "--source", mitdb_dir, "--out", out)["status"] == "up to date"
    assert not list(out.glob(".heart-build-*"))


# --------------------------------------------- moved here from tests/test_trust.py


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


def _flock_held(path: Path) -> bool:
    """Whether some process holds a flock on ``path`` (read from /proc/locks, not taken)."""
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return False
    return any(
        "FLOCK" in line and line.split()[5].endswith(f":{inode}")
        for line in Path("/proc/locks").read_text().splitlines()
    )


def _workers(search: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        state = json.loads((search / "search.json").read_text())
        return [t["worker"] for t in state["trials"] if t["status"] == "running" and t["worker"]]
    return []


def test_two_fetches_into_one_folder_never_mix(tmp_path):
    out = tmp_path / "ds"
    first = subprocess.Popen(
        [sys.executable, "-m", "heartcli", "-q", "fetch", "--source", MITDB, "--out", out],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )  # fmt: skip
    deadline = time.time() + 120
    lock = out / ".heart-build-lock"  # held by the first fetch; staging folders on old code
    while not (_flock_held(lock) or any(p.is_dir() for p in out.glob(".heart-build-*"))):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = cli("-q", "fetch", "--source", MITDB, "--out", out, cwd=tmp_path, timeout=300)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    assert "another `heart fetch` is writing this dataset" in one_error(second.stderr)
    again = cli("--json", "fetch", "--source", MITDB, "--out", out, cwd=tmp_path, timeout=300)
    assert json.loads(again.stdout)["status"] == "up to date"  # whole, every file verified


def test_pipes_as_config_or_manifest_never_hang(tmp_path):
    fifo = tmp_path / "heart.toml"
    os.mkfifo(fifo)
    r = cli("config", "show", "--config", fifo, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "named pipe" in one_error(r.stderr)
    dataset = tmp_path / "ds"
    shutil.copytree(SAMPLE, dataset)
    (dataset / "manifest.json").unlink()
    os.mkfifo(dataset / "manifest.json")
    r = cli("train", *QUICK, "--set", f"data.dir={dataset}", cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "named pipe" in one_error(r.stderr)
    before = sorted(tmp_path.rglob("*"))
    r = cli("--json", "tune", *QUICK, "--evals", "1", "--max-minutes", "inf", cwd=tmp_path)
    assert r.returncode == 2 and "--max-minutes inf" in json.loads(r.stdout)["error"]
    assert sorted(tmp_path.rglob("*")) == before  # refused before a search folder was made


def test_sigterm_with_a_stopped_worker_ends_in_bounded_time(tmp_path):
    args = [sys.executable, "-m", "heartcli", "-q", "tune", *QUICK, "--set", "train.epochs=200",
            "--set", "search.pruner=none", "--evals", "2", "-j", "2", "-n", "s"]  # fmt: skip
    tune = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )  # fmt: skip
    stopped = None
    try:
        deadline = time.time() + 180
        while len(_workers(tmp_path / "runs" / "s")) < 2:
            assert tune.poll() is None and time.time() < deadline, tune.communicate()
            time.sleep(0.2)
        stopped = _workers(tmp_path / "runs" / "s")[0]
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        tune.send_signal(signal.SIGTERM)
        _, err = tune.communicate(timeout=60)
        assert tune.returncode == 130, err
        assert time.monotonic() - started < 30
        assert (
            not Path(f"/proc/{stopped}").exists()
            or "zombie" in Path(f"/proc/{stopped}/status").read_text()
        )
    finally:
        if tune.poll() is None:
            tune.kill()
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
