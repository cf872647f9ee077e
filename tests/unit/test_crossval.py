"""`heart train --folds K` stopped anywhere (SIGTERM as Ctrl-C, SIGKILL) and continued with
`heart train --resume`: what finished stays, the name is continued, and a continued final
run is the final run it was (no validation fold) with the cross-validation's figures.

Each test stops a real `heart train` process (the tiny config of conftest, 2 stratified
folds on the bundled sample) when a file shows where it is, then resumes it in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_config

EPOCHS = 12  # a fold or the final run lasts a second or two: time to stop it in the middle


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    config = make_config(tmp_path, train={"epochs": EPOCHS, "patience": EPOCHS})
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "heartcli", "-q", "train", "-c", str(config), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_when(proc: subprocess.Popen[str], path: Path, sig: int) -> str:
    """Send ``sig`` as soon as ``path`` exists; the process's stderr."""
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return err


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.mark.slow
def test_sigterm_in_a_fold_keeps_the_finished_folds_and_resume_finishes(heart, tmp_path):
    run = tmp_path / "runs" / "cv"
    proc = start(tmp_path, "--folds", "2", "--name", "cv")
    err = stop_when(proc, run / "folds" / "fold-2" / "history.csv", signal.SIGTERM)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: interrupted: runs/cv keeps its finished folds (1); continue it with "
        "`heart train --resume runs/cv`"
    )
    assert manifest(run / "folds" / "fold-1")["status"] == "completed"
    assert manifest(run)["status"] == "interrupted" and manifest(run)["crossval"]["k"] == 2
    assert not (run / ".lock").exists()
    r = heart("train", "-c", tmp_path / "tiny.toml", "--name", "cv", expect=2)
    assert "continue it with `heart train --resume runs/cv`" in r.stderr
    done = heart.json("train", "--resume", "runs/cv")
    assert [f["fold"] for f in done["folds"]] == [1, 2] and done["final"]["status"] == "completed"
    assert manifest(run)["crossval"]["oof"]["n"] == done["oof"]["n"]


@pytest.mark.slow
def test_sigkill_in_a_fold_leaves_a_run_that_resume_continues(heart, tmp_path):
    run = tmp_path / "runs" / "cv"
    proc = start(tmp_path, "--folds", "2", "--name", "cv")
    stop_when(proc, run / "folds" / "fold-1" / "history.csv", signal.SIGKILL)
    assert manifest(run)["status"] == "running"  # what the kill left
    done = heart.json("train", "--resume", "runs/cv")
    assert done["final"]["status"] == "completed" and len(done["folds"]) == 2
    assert (run / "oof.npz").is_file() and manifest(run)["status"] == "completed"


@pytest.mark.slow
def test_resume_of_a_stopped_final_run_continues_it_without_validation(heart, tmp_path):
    run = tmp_path / "runs" / "cv"
    # 4 times the beats an epoch: the final run's epochs last long enough to stop one
    proc = start(tmp_path, "--folds", "2", "--name", "cv", "--set", "resample.target=600")
    stop_when(proc, run / "history.csv", signal.SIGTERM)  # the final run's first epoch
    assert proc.returncode == 130
    stopped = manifest(run)
    assert stopped["status"] == "interrupted" and stopped["data"]["validation"] is False
    epochs = len((run / "history.csv").read_text().splitlines()) - 1
    done = heart.json("train", "--resume", "runs/cv")
    final = manifest(run)
    # the final run it was: no validation fold carved, its own number of epochs, resumed
    assert final["data"]["validation"] is False
    assert sum(final["data"]["val_counts"].values()) == 0
    assert final["epochs_run"] == done["final_epochs"] > epochs >= 1
    assert all(row["val_loss"] != row["val_loss"] for row in done["final"]["history"])  # NaN
    # and the cross-validation's figures, which a plain resume of the final run dropped
    assert set(final["crossval"]) >= {"folds", "figures", "oof", "final_epochs"}
    assert (run / "oof.npz").is_file()
    r = heart("train", "--resume", "runs/cv", "--set", "train.epochs=3", expect=2)
    assert "continues with the config its folds trained with" in r.stderr


def test_keys_cross_validation_would_ignore_are_refused(heart, tmp_path):
    config = make_config(tmp_path)
    r = heart("train", "-c", config, "--folds", "2", "--set", "train.val_records=2", expect=2)
    assert r.stderr.strip() == (
        "error: train.val_records picks the validation records of one run; cross-validation "
        "validates on every fold in turn and would ignore it: set it to 0"
    )
    r = heart("train", "-c", config, "--folds", "101", expect=2)
    assert r.stderr.strip() == "error: --folds 101: use 2 to 100 folds"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
