"""Faults and races that must never mix or lose data (issue 12).

Two `heart train --name X` at the same moment, a dataset rebuild that cannot finish, a build
killed with SIGKILL, a run's config.toml cut in half, SIGTERM during training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import quick_args

from heartcli.data.dataset import load_split

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


# --------------------------------------------------------------------------- run folders


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


def test_truncated_config_is_refused_on_resume(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.batch_size=64"), "--name", "cut")
    run = Path("runs/cut")
    config = run / "config.toml"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    cut = config.read_bytes()
    result = heart("train", "--resume", run, "--set", "train.epochs=3", expect=1)
    assert result.stderr.startswith(f"error: {config}: does not match the checksum")
    assert len(result.stderr.strip().splitlines()) == 1
    assert config.read_bytes() == cut  # nothing rewrote it
    assert json.loads((run / "manifest.json").read_text())["epochs_run"] == 2


def test_resume_with_set_writes_the_config_back_and_nothing_else_rewrites_it(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "more")
    run = Path("runs/more")
    config = run / "config.toml"
    before = config.stat().st_mtime_ns
    heart("-q", "train", "--resume", run)  # nothing to change: config.toml untouched
    assert config.stat().st_mtime_ns == before
    heart("-q", "train", "--resume", run, "--set", "train.epochs=2")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["epochs_run"] == 2
    assert "epochs = 2" in config.read_text()
    import hashlib

    assert manifest["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    heart("-q", "train", "--resume", run, "--set", "train.epochs=3")  # its own --set is fine


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


# --------------------------------------------------------------------------- the dataset


def unwritable(folder: Path) -> None:
    """Make ``folder`` refuse changes for real: chmod for a normal user; for root, who
    ignores permission bits, the immutable attribute (chattr +i)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder unwritable")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i refused here: {done.stderr.decode().strip()}")


def writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def digests(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".heart-build-" not in str(p)
    }


def test_a_rebuild_that_cannot_finish_leaves_the_old_dataset_whole(heart, mitdb_dir, tmp_path):
    out = tmp_path / "d"
    heart("-q", "fetch", "--source", mitdb_dir, "--out", out)
    before = digests(out)
    unwritable(out / "inter-patient")
    try:
        probe = out / "inter-patient" / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        result = heart(
            "-q", "fetch", "--source", mitdb_dir, "--out", out, "--set", "data.seed=7", expect=1
        )
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("error: cannot replace the dataset in")
        assert len(result.stderr.strip().splitlines()) == 1
        # the old dataset, every byte of it, manifest and files together
        assert digests(out) == before
        assert not list(out.glob(".heart-build-*"))
        again = heart.json("fetch", "--source", mitdb_dir, "--out", out)
        assert again["status"] == "up to date"  # seed 42, and its files are the listed ones
    finally:
        writable(out / "inter-patient")
    rebuilt = heart.json("fetch", "--source", mitdb_dir, "--out", out, "--set", "data.seed=7")
    assert rebuilt["status"] == "built"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 7
    assert digests(out)["random/train.parquet"] != before["random/train.parquet"]


def test_up_to_date_checks_the_files_against_the_manifest(heart, mitdb_dir, sample_dir, tmp_path):
    """A split file that is not the one the manifest lists (a half-swapped rebuild) is
    neither "up to date" for fetch nor trained on."""
    out = tmp_path / "d"
    heart("-q", "fetch", "--source", mitdb_dir, "--out", out)
    # put another dataset's file in place of one part: the manifest no longer describes it
    shutil.copy(sample_dir / "random" / "train.parquet", out / "random" / "train.parquet")
    result = heart("train", *quick(out), "--name", "mixed", expect=1)
    assert "is not the file manifest.json lists" in result.stderr
    assert not Path("runs/mixed").exists()
    assert heart.json("fetch", "--source", mitdb_dir, "--out", out)["status"] == "built"
    assert len(load_split(out, "random", "train")) == 87_556


def test_a_build_killed_with_sigkill_leaves_no_staging_folder_behind(heart, mitdb_dir, tmp_path):
    out = tmp_path / "d"
    heart("-q", "fetch", "--source", mitdb_dir, "--out", out)
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
