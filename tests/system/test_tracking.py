"""A real `mlflow server` on 127.0.0.1: passwords never stored in runs or sent to it."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli, free_port, quick_args

pytestmark = pytest.mark.slow  # a system test (tests/system): whole processes, slow

# --------------------------------------------- moved here from tests/test_trust.py


PASSWORD = "S3cr3tPW"


BIN = Path(sys.executable).parent


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real `mlflow server` on 127.0.0.1, started when the module starts so that it is up
    by the time the last test needs it (it takes a while to start)."""
    server_dir = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
         "--artifacts-destination", str(server_dir / "artifacts")],
        cwd=server_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port, server_dir
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_password_is_not_stored_in_runs_or_sent_to_mlflow(tmp_path, mlflow_server):
    port, server_dir = mlflow_server
    deadline = time.time() + 180
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        assert time.time() < deadline, "mlflow server did not start"
        time.sleep(0.5)
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    r = cli("--json", "train", *QUICK, "--set", "tracking.enabled=true",
            "--set", f'tracking.uri="{uri}"', "--name", "r", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["tracking_run_id"]
    r = cli("evaluate", "runs/r", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 0, r.stderr
    assert "logged to MLflow run" in r.stderr and f"http://***@127.0.0.1:{port}" in r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    manifest = json.loads((tmp_path / "runs/r/manifest.json").read_text())
    assert manifest["tracking"]["uri"] == f"http://***@127.0.0.1:{port}"
    for path in [*(tmp_path / "runs").rglob("*"), *server_dir.rglob("*")]:
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    params = client.get_run(run_id).data.params
    assert params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
    assert "test_accuracy" in client.get_run(run_id).data.metrics  # logged with the password
