"""A full disk (a small loop-mounted file system) during train, evaluate, fetch and tune."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MITDB, QUICKSTART, SAMPLE, cli, one_error, quick_args

pytestmark = pytest.mark.slow  # a system test (tests/system): whole processes, slow

# --------------------------------------------- moved here from tests/test_trust.py


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


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
