"""heartcli.data.dataset: a dataset's splits and manifest files are its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, one_error, quick_args

# --------------------------------------------- moved here from tests/test_trust.py


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


@pytest.fixture
def tiny(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


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
