"""redact.py through the CLI: every spelling of a password stays hidden, a 1 MB config is
redacted in linear time, and an MLflow server that dies during training ends the run in one
redacted line within seconds (MLflow's own retries bounded, its exception never a
traceback).

The dead server is a real `mlflow server` on 127.0.0.1, killed after the run's first epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, make_config, one_error, quick_args

BIN = Path(sys.executable).parent
SECRET = "Zq7Kx9Wv"  # the part of every password below that must never be shown


def run_heart(*args: str | os.PathLike[str], cwd: Path, timeout: float = 120, **env: str):
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full.update({"COLUMNS": "120", "OMP_WAIT_POLICY": "PASSIVE", **env})
    return subprocess.Popen(
        [sys.executable, "-m", "heartcli", *map(str, args)],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_password_in_any_spelling_is_never_printed(heart):
    spellings = [
        f"http://alice:{SECRET}/x@127.0.0.1:9",  # an unencoded "/" in the password
        f"http://alice:{SECRET}#x@127.0.0.1:9",
        f"http://alice:{SECRET}?x@127.0.0.1:9",
        f"http://alice:{SECRET} x@127.0.0.1:9",
        f"http://alice:x/{SECRET}@127.0.0.1:9",  # the secret after the "/"
        f"http://127.0.0.1:9/?pass={SECRET}",
        f"http://127.0.0.1:9/?user=a&passphrase={SECRET}",
        f"http://127.0.0.1:9/?pwd={SECRET}",
    ]
    for uri in spellings:
        sets = ["--set", "tracking.enabled=true", "--set", f'tracking.uri="{uri}"']
        r = heart("--json", "train", *quick_args(), *sets, expect=1)
        assert SECRET not in r.stdout + r.stderr, uri
        assert "***" in one_error(r.stderr) and "***" in json.loads(r.stdout)["error"], uri
        shown = heart("config", "show", "--set", f'tracking.uri="{uri}"')
        assert SECRET not in shown.stdout and "***" in shown.stdout, uri


def test_a_1mb_config_is_shown_in_seconds(tmp_path):
    """`heart config show` of a config at the 1 MB limit: a long comment (a run of letters,
    which the old patterns scanned once per letter) and a long value; at most 5 s of CPU."""
    config = tmp_path / "big.toml"
    size = (1 << 20) - 400
    config.write_text(
        f'# {"a" * (size // 2)}\n[tracking]\nexperiment = "{"b" * (size // 2)}?key=1"\n'
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_heart("config", "show", "-c", config, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, err
    assert "?key=***" in out and len(out) > size
    assert cpu <= 5.0, f"{cpu:.1f} s of CPU"


def _wait_for(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise AssertionError("mlflow server did not start")


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_run_ends_in_one_hidden_line(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(port, server)
        config = make_config(tmp_path, train={"epochs": 500, "patience": 500})
        uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        proc = run_heart("--json", "train", "-c", config, "--name", "r",
                         "--set", "tracking.enabled=true", "--set", f'tracking.uri="{uri}"',
                         cwd=tmp_path)  # fmt: skip
        history = tmp_path / "runs" / "r" / "history.csv"
        deadline = time.monotonic() + 180
        while not history.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert history.exists(), proc.communicate()[1]
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server dies; the run goes on training
        server.wait(timeout=30)
    killed = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert time.monotonic() - killed < 60  # MLflow's own retries: about 8 minutes
    assert proc.returncode == 1, err
    line = one_error(err)
    assert line.startswith(f"error: tracking: cannot log to MLflow at http://***@127.0.0.1:{port}")
    assert "heart train --resume" in line
    assert SECRET not in out + err and json.loads(out)["exit_code"] == 1
    manifest = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert manifest["status"] == "failed"  # the run's files stay, to be resumed


# --------------------------------------------- moved here from tests/test_trust.py


PASSWORD = "S3cr3tPW"


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


@pytest.mark.slow
def test_password_in_a_tracking_uri_is_never_printed(heart, monkeypatch):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:9"
    args = ["train", *QUICK, "--set", "tracking.enabled=true"]
    r = heart("--json", *args, "--set", f'tracking.uri="{uri}"', expect=1)
    assert PASSWORD not in r.stdout + r.stderr
    assert "http://***@127.0.0.1:9" in one_error(r.stderr)
    assert "***@127.0.0.1:9" in json.loads(r.stdout)["error"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # from the environment alone
    r = heart(*args, expect=1)
    assert PASSWORD not in r.stdout + r.stderr
    r = heart("config", "show", "--set", f'tracking.uri="{uri}"')
    assert PASSWORD not in r.stdout
