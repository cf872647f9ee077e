"""Threads and start-up: `[train] threads`, OpenMP's wait policy, and what each command imports.

The busy programs here are real processes (a Python busy loop), the CPU load is read from
the real /proc/stat, and the import checks look at a real `heart` subprocess's sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import Exported, quick_args

from heartcli.threads import ThreadPolicy, auto_threads, cgroup_cpus, usable_cpus

pytestmark = pytest.mark.slow  # a system test (tests/system): whole processes, slow

HEAVY = ["torch", "mlflow", "ray", "onnxruntime", "pandas", "matplotlib", "wfdb", "sklearn"]
ON_LINUX = Path("/proc/stat").exists()


@pytest.fixture
def tiny(exported: Exported) -> Exported:
    """The session's trained run, evaluated and exported in every format (conftest)."""
    return exported


@pytest.fixture
def busy_loop() -> Iterator[subprocess.Popen[bytes]]:
    """One CPU-bound program at normal priority, beside the test."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # running, not starting
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def train_args(tmp_path: Path, *sets: str) -> list[str]:
    """QUICK (conftest) on 100 beats a class, into ``tmp_path/runs/t``."""
    runs = f"train.runs_dir={tmp_path / 'runs'}"
    return ["train", "--name", "t", *quick_args(runs, "resample.target=100", *sets)]


def heart_process(args: list[str], env_extra: dict[str, str | None]) -> subprocess.CompletedProcess:
    """`heart ARGS` as a user runs it: the console entry point in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({k: v for k, v in env_extra.items() if v is not None})
    return subprocess.run(
        [sys.executable, "-m", "heartcli", *args], env=env, capture_output=True, text=True
    )


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "t" / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("user", "expected", "shown"),
    [
        (None, "PASSIVE", "PASSIVE"),
        ("ACTIVE", "ACTIVE", "ACTIVE"),
        # not a policy: libgomp would ignore it; heart waits passively and says why
        ("junk", "PASSIVE", "PASSIVE (OMP_WAIT_POLICY='junk' is not ACTIVE or PASSIVE)"),
    ],
)
def test_openmp_waits_passively_unless_the_user_chose(tmp_path, user, expected, shown):
    done = heart_process(train_args(tmp_path), {"OMP_WAIT_POLICY": user})
    assert done.returncode == 0, done.stderr
    assert manifest(tmp_path)["omp_wait_policy"] == expected
    assert f"OpenMP waiting: {shown}\n" in done.stderr


def test_a_fixed_thread_count_reaches_torch(heart, tmp_path, keep_torch_threads):
    torch.set_num_threads(2)
    heart(*train_args(tmp_path, "train.threads=1"))
    assert torch.get_num_threads() == 1
    m = manifest(tmp_path)
    assert (m["threads"], m["threads_setting"]) == (1, 1)
    history = (tmp_path / "runs" / "t" / "history.csv").read_text().splitlines()
    assert history[0].split(",")[-1] == "threads" and history[1].split(",")[-1] == "1"


@pytest.mark.skipif(not ON_LINUX or usable_cpus() < 2, reason="needs /proc/stat and 2 CPUs")
def test_auto_leaves_the_cpu_a_busy_program_holds(heart, tmp_path, busy_loop, keep_torch_threads):
    result = heart(*train_args(tmp_path))
    m = manifest(tmp_path)
    assert m["threads_setting"] == "auto"
    assert 1 <= m["threads"] <= usable_cpus() - 1
    assert "busy elsewhere" in result.stderr
    assert torch.get_num_threads() == m["threads"]


@pytest.mark.skipif(not ON_LINUX or usable_cpus() < 2, reason="needs /proc/stat and 2 CPUs")
def test_auto_rechecks_when_a_busy_program_starts(keep_torch_threads):
    policy = ThreadPolicy("auto")
    policy.start()
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.8)  # the "epoch": heart idle, the busy loop on a CPU
        policy.recheck()
    finally:
        proc.kill()
        proc.wait()
    assert policy.choice.threads <= usable_cpus() - 1
    assert policy.choice.others is not None and policy.choice.others >= 0.5
    assert torch.get_num_threads() == policy.choice.threads


def test_auto_threads_arithmetic():
    assert auto_threads(2, None) == 2  # nothing measured: every usable CPU
    assert auto_threads(2, 0.1) == 2
    assert auto_threads(2, 0.67) == 1  # one busy loop sharing 2 CPUs with 2 threads
    assert auto_threads(2, 1.0) == 1
    assert auto_threads(2, 3.0) == 1  # never fewer than one
    assert auto_threads(8, 2.4) == 6


def test_cgroup_quota_is_read_from_real_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(tmp_path) is None


def test_usable_cpus_follows_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = (
        "import os; os.sched_setaffinity(0, {0}); "
        "from heartcli.threads import usable_cpus; print(usable_cpus())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr


@pytest.mark.parametrize(
    ("value", "problem"),
    [("-1", "-1"), ('"many"', "'many'"), (str(2**31), str(2**31)), ("2.5", "")],
)
def test_bad_thread_counts_are_one_line(heart, tmp_path, value, problem):
    result = heart(*train_args(tmp_path, f"train.threads={value}"), expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.threads" in lines[0]
    assert problem in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_more_threads_than_cpus_warns_and_trains(heart, tmp_path, keep_torch_threads):
    count = usable_cpus() + 1
    result = heart(*train_args(tmp_path, f"train.threads={count}"))
    assert f"warning: train.threads = {count} is more than the" in result.stderr
    assert manifest(tmp_path)["threads"] == count


def imports_of(args: list[str], cwd: Path | None = None) -> tuple[int, list[str], str]:
    """Exit code and the heavy modules loaded by `heart ARGS` in a fresh process."""
    code = (
        "import json, sys\n"
        "from heartcli.cli.app import main\n"
        f"sys.argv = ['heart', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
        "else:\n    code = 0\n"
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), "
        "file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    last = done.stderr.strip().splitlines()[-1]
    rc, loaded = json.loads(last)
    return rc, loaded, done.stderr


@pytest.mark.parametrize(
    "args", [["--version"], ["--help"], ["train", "--help"], ["tune", "--help"]]
)
def test_help_and_version_load_no_heavy_library(args):
    rc, loaded, err = imports_of(args)
    assert rc == 0, err
    assert loaded == []


def test_predict_with_onnx_loads_no_torch(tiny, tmp_path, mitdb_dir):
    out = tmp_path / "beats.csv"
    model = tiny.export / "model.onnx"
    rc, loaded, err = imports_of(["predict", str(model), str(mitdb_dir / "100"), "--out", str(out)])
    assert rc == 0, err
    assert "torch" not in loaded and "onnxruntime" in loaded
    assert out.exists() and len(out.read_text().splitlines()) > 2000


def test_threads_module_imports_no_torch():
    code = "import sys, heartcli.threads; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
