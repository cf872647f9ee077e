"""Trust (issue 19): no secret printed or stored, nothing deleted that heart did not make,
no NaN model scored, every write error one line, bounded inputs, no unbounded waits.

One test per cause, through the CLI, on the bundled sample and the real records. The full
disk is a real small tmpfs (root only; skipped with the reason otherwise), the pipes are
real FIFOs, and the password case talks to a real `mlflow server` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MITDB, QUICKSTART, SAMPLE, quick_args

PASSWORD = "S3cr3tPW"
BIN = Path(sys.executable).parent
QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


def cli(
    *args: str | os.PathLike[str],
    cwd: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`heart` as a user runs it: its own process (worker tracebacks reach its stderr)."""
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full.update({"OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "120", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "heartcli", *map(str, args)],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error(stderr: str) -> str:
    """The stderr of a failed command: one `error:` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def tiny(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


@contextlib.contextmanager
def small_fs(where: Path, kib: int, free_kib: int) -> Iterator[Path]:
    """A real tmpfs of ``kib`` KiB at ``where`` with about ``free_kib`` KiB left free."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = where / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            fh.write(b"\0" * ((kib - free_kib) * 1024))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def no_temp_files(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not left, left


# --------------------------------------------------------------------------- secrets


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


# --------------------------------------------------------------------------- --force


def test_export_force_replaces_only_a_heart_export(heart, tiny, tmp_path):
    run = tmp_path / "runs" / "x<img src=y>*b*[l](u)|"  # a run folder renamed by hand
    shutil.copytree(tiny, run)
    out = tmp_path / "exported"
    beats = SAMPLE / "random" / "test.parquet"  # --data FILE: a documented form
    heart("-q", "export", run, "--format", "torchscript", "--out", out, "--data", beats)
    card = (out / "MODEL_CARD.md").read_text()
    assert "<img" not in card and "# Model card: x&lt;img src=y&gt;\\*b\\*\\[l\\]\\(u\\)\\|" in card
    heart("-q", "export", run, "--format", "torchscript", "--out", out, "--force")  # an export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    other = tmp_path / "runs" / "other"
    shutil.copytree(tiny, other)
    dataset = tmp_path / "dataset"
    shutil.copytree(SAMPLE, dataset)
    for folder in (mine, other, dataset):
        before = sorted(p.name for p in folder.iterdir())
        r = heart("export", run, "--format", "torchscript", "--out", folder, "--force", expect=2)
        assert "--force replaces only a folder heart exported" in one_error(r.stderr)
        assert sorted(p.name for p in folder.iterdir()) == before
    (out / "mine.txt").write_text("x")  # an export with a user's file added to it
    heart("export", run, "--format", "torchscript", "--out", out, "--force", expect=2)
    assert (out / "mine.txt").exists()


# --------------------------------------------------------------------------- fetch lock


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


# --------------------------------------------------------------------------- output paths


def test_outputs_refuse_fifos_devices_and_their_own_input(heart, tiny, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    r = heart("config", "init", fifo, "--force", expect=2)
    assert "a named pipe (FIFO), not a regular file" in one_error(r.stderr)
    beats = tmp_path / "beats.parquet"
    shutil.copy(SAMPLE / "random" / "test.parquet", beats)
    heart("predict", tiny, beats, "--out", fifo, expect=2)
    r = heart("resample", "--config", QUICKSTART, "--set", f"data.dir={SAMPLE}", "--out", fifo,
              expect=2)  # fmt: skip
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    before = beats.read_bytes()
    r = heart("predict", tiny, beats, "--out", beats, expect=2)
    assert "is the input" in one_error(r.stderr) and beats.read_bytes() == before
    r = heart("predict", tiny, beats, "--out", tiny / "manifest.json", expect=2)
    assert "a file of the run folder" in one_error(r.stderr)
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root: the device case is not checked")
    heart("config", "init", device, "--force", expect=2)
    assert stat.S_ISCHR(os.stat(device).st_mode)


# --------------------------------------------------------------------------- finite outputs


def test_a_model_that_outputs_nan_is_never_scored(heart, tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "nan-run"
    shutil.copytree(tiny, run)
    state = load_file(run / "model.safetensors")
    first = next(k for k in state if k.endswith("weight") and state[k].is_floating_point())
    state[first][:] = float("nan")
    save_file(state, str(run / "model.safetensors"), metadata={"format": "heart-run/1"})
    r = heart("predict", run, MITDB / "100", expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr) and str(run) in r.stderr
    r = heart("evaluate", run, expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr)
    assert not (run / "eval.json").exists()
    r = heart("export", run, "--format", "onnx", "--out", tmp_path / "e", expect=1)
    assert "outputs NaN or inf" in one_error(r.stderr)
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- full disk


def test_a_full_disk_is_one_line_and_a_failed_run(heart, tiny, tmp_path):
    with small_fs(tmp_path / "fs", kib=1024, free_kib=40) as fs:
        r = heart(
            "train", *QUICK, "--set", f"train.runs_dir={fs / 'runs'}", "--name", "r", expect=1
        )
        assert "No space left on device" in one_error(r.stderr)
        manifest = fs / "runs" / "r" / "manifest.json"
        assert json.loads(manifest.read_text())["status"] == "failed"  # not left "running"
        no_temp_files(fs)
    with small_fs(tmp_path / "fs2", kib=1024, free_kib=0) as fs:
        for args in (
            ("config", "init", fs / "heart.toml"),
            ("export", tiny, "--format", "torchscript", "--out", fs / "exp"),
            ("predict", tiny, SAMPLE / "random" / "test.parquet", "--out", fs / "p.csv"),
            ("resample", "--config", QUICKSTART, "--set", f"data.dir={SAMPLE}",
             "--out", fs / "r.parquet"),
        ):  # fmt: skip
            r = heart(*args, expect=1)
            assert "No space left on device" in one_error(r.stderr), args
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]
    not_a_folder = tmp_path / "runs-file"
    not_a_folder.write_text("")
    r = heart("tune", *QUICK, "--evals", "1", "--set", f"train.runs_dir={not_a_folder}", expect=1)
    assert f"cannot create {not_a_folder}" in one_error(r.stderr)


def test_a_full_disk_in_evaluate_fetch_and_tune(tiny, tmp_path):
    with small_fs(tmp_path / "fs", kib=2048, free_kib=2048) as fs:
        run = fs / "run"
        shutil.copytree(tiny, run)
        with open(fs / "filler2", "wb") as fh, contextlib.suppress(OSError):
            fh.write(b"\0" * (4 << 20))  # fill what is left
        r = cli("evaluate", run, cwd=tmp_path)
        assert r.returncode == 1 and "No space left" in one_error(r.stderr)
        assert not (run / "eval.json").exists()
        r = cli("fetch", "--source", MITDB, "--out", fs / "ds", cwd=tmp_path, timeout=300)
        assert r.returncode == 1 and "No space left" in one_error(r.stderr)
        assert not (fs / "ds" / "manifest.json").exists()
        no_temp_files(fs)
    with small_fs(tmp_path / "fs3", kib=1024, free_kib=48) as fs:
        r = cli("--json", "tune", *QUICK, "--evals", "2", "--set", f"train.runs_dir={fs}",
                "--name", "s", cwd=tmp_path, timeout=300)  # fmt: skip
        assert r.returncode == 1, r.stderr
        line = one_error(r.stderr)  # the workers' failures are table rows, not tracebacks
        assert "every trial failed (2; trial 1: cannot write" in line and "No space left" in line
        assert json.loads(r.stdout)["exit_code"] == 1


# --------------------------------------------------------------------------- bounds


def _beats_file(tmp_path: Path, change) -> Path:
    table = pq.read_table(SAMPLE / "random" / "test.parquet")
    path = tmp_path / "beats.parquet"
    pq.write_table(change(table), path)
    return path


def test_sizes_and_inputs_are_bounded_before_work_starts(heart, tiny, tmp_path):
    r = heart("config", "show", "--set", "train.epoch_beats=1000000000000", expect=2)
    assert "train.epoch_beats" in one_error(r.stderr)
    r = heart("config", "show", "--set", "train.warmup_epochs=5", "--set", "train.epochs=2",
              expect=2)  # fmt: skip
    assert "warmup_epochs" in one_error(r.stderr)
    space = tmp_path / "space.toml"
    space.write_text('[search.space]\n"train.epochs" = {quniform = [1, 1000000000000, 1]}\n')
    r = heart("config", "show", "--config", space, expect=2)
    assert "at most 100,000" in one_error(r.stderr)

    def big_label(table: pa.Table) -> pa.Table:
        target = table.column("target").to_numpy().copy()
        target[0] = 10**9
        return table.set_column(table.schema.get_field_index("target"), "target", pa.array(target))

    r = heart("evaluate", tiny, "--data", _beats_file(tmp_path, big_label), expect=1)
    assert "class indices 0..999" in one_error(r.stderr)

    def text_rhythm(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("rr_pre")
        return table.set_column(i, "rr_pre", table.column("rr_pre").cast(pa.string()))

    r = heart("evaluate", tiny, "--data", _beats_file(tmp_path, text_rhythm), expect=1)
    assert "rr_pre" in one_error(r.stderr)
    record = tmp_path / "rec"
    record.mkdir()
    for ext in ("hea", "dat", "atr"):
        shutil.copy(MITDB / f"100.{ext}", record / f"100.{ext}")
    header = (record / "100.hea").read_text().splitlines()
    header[0] = header[0].replace(" 360 ", " 1000000000 ")
    (record / "100.hea").write_text("\n".join(header) + "\n")
    r = heart("predict", tiny, record / "100", expect=1)
    assert "1e+09 Hz is outside 50 to 20,000 Hz" in one_error(r.stderr)


def test_splits_and_manifest_files_are_the_datasets_own(heart, tiny, tmp_path):
    r = heart("evaluate", tiny, "--split", "../sample/random", expect=2)
    assert "not a split of" in one_error(r.stderr)
    r = heart("train", *QUICK, "--set", 'data.split="../sample/random"', expect=2)
    assert "not a split of" in one_error(r.stderr)
    dataset = tmp_path / "ds"
    shutil.copytree(SAMPLE, dataset)
    manifest = json.loads((dataset / "manifest.json").read_text())
    del manifest["files"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    r = heart("evaluate", tiny, "--data", dataset, expect=1)
    assert 'no "files"' in one_error(r.stderr)


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


# --------------------------------------------------------------------------- tune


def _workers(search: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        state = json.loads((search / "search.json").read_text())
        return [t["worker"] for t in state["trials"] if t["status"] == "running" and t["worker"]]
    return []


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


# --------------------------------------------------------------------------- secrets, stored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real `mlflow server` on 127.0.0.1, started when the module starts so that it is up
    by the time the last test needs it (it takes a while to start)."""
    server_dir = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
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
