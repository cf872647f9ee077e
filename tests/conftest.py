"""Shared fixtures: the real MIT-BIH records, the bundled sample, and a CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from heartcli.cli.app import app

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb"
SAMPLE = REPO / "data" / "sample"
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """The real MIT-BIH Arrhythmia Database (48 records), read-only."""
    if not (MITDB / "100.dat").exists():
        pytest.fail(f"the real records are missing at {MITDB}; the tests need ../shared/data/mitdb")
    return MITDB


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled sample of real beats under data/sample."""
    return SAMPLE


class Heart:
    """Runs `heart` in-process through Typer's CliRunner at a fixed width, no terminal."""

    def __init__(self) -> None:
        self.runner = CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})

    def __call__(self, *args: str | os.PathLike[str], expect: int | None = 0) -> Any:
        result = self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str | os.PathLike[str]) -> Any:
        return json.loads(self("--json", *args).stdout)


@pytest.fixture
def heart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Heart:
    """The CLI, run from an empty temp folder (MLflow store and runs land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Heart()
