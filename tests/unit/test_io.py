"""heartcli.io: outputs are regular files, never a pipe, a device or the command's own input."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import QUICKSTART, SAMPLE, one_error

# --------------------------------------------- moved here from tests/test_trust.py


@pytest.fixture
def tiny(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


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
