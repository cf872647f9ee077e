"""heartcli.config: what a config may hold and the one line that says what is wrong with it
(duplicate keys, seeds, non-finite floats, sizes, a huge file), through the commands that
load it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MITDB, SAMPLE, error_line, one_error, quick_args

# --------------------------------------------- moved here from tests/test_hardening.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[train]\nepochs = 3\nlr = 0.01\nepochs = 4\n", "4 epochs"),
        ("[train]\nepochs = 3\n[model]\ndropout = 0.1\n[train]\nlr = 0.01\n", "5 train"),
        ('[train]\n"lr" = 0.1\nlr = 0.01\n', "3 lr"),
    ],
)
def test_duplicate_key_names_file_line_and_key(heart, tmp_path, text, where):
    # heart's own wording, whatever the TOML parser calls it (tomlkit 0.15: a ParseError)
    cfg = tmp_path / "dup.toml"
    cfg.write_text(text)
    line = error_line(heart("train", "--config", cfg, expect=None), 2)
    assert line.startswith(f"error: {cfg}:{where}: defined twice")


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("train", "train.seed=-1", "--set train.seed: input should be greater than or equal to 0"),
        (
            "train",
            "resample.seed=-1",
            "--set resample.seed: input should be greater than or equal to 0",
        ),
        (
            "train",
            "train.seed=99999999999999999999999",
            "--set train.seed: input should be less than or equal to 4294967295",
        ),
        ("fetch", "data.seed=-1", "--set data.seed: input should be greater than or equal to 0"),
        ("tune", "search.seed=-1", "--set search.seed: input should be greater than or equal to 0"),
    ],
)
def test_seeds_out_of_range_are_config_errors(heart, sample_dir, command, override, message):
    args = quick(sample_dir) if command == "train" else []
    result = heart(command, *args, "--set", override, expect=None)
    assert error_line(result, 2).startswith(f"error: {message}")
    assert not Path("runs").exists()


def test_every_float_must_be_finite(heart, sample_dir, tmp_path):
    cfg = tmp_path / "inf.toml"
    cfg.write_text("[train]\nlr = inf\n")
    line = error_line(heart("train", "--config", cfg, expect=None), 2)
    assert line == (
        f"error: {cfg}:2 train.lr: input should be a finite number "
        "(expected a finite number, got float inf)"
    )
    line = error_line(heart("config", "show", "--set", "model.dropout=nan", expect=None), 2)
    assert line.startswith("error: --set model.dropout: input should be a finite number")


def test_a_huge_config_is_refused_at_once_without_echo(heart, tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text("[train]\n" + "".join(f"# {'x' * 70}\n" for _ in range(20_000)))
    started = time.perf_counter()
    result = heart("config", "show", "--config", cfg, expect=None)
    assert time.perf_counter() - started < 5
    line = error_line(result, 2)
    assert line.startswith(f"error: {cfg}: 1,460,008 bytes is too big for a config file")
    assert result.stdout == ""


# --------------------------------------------- moved here from tests/test_trust.py


@pytest.fixture
def tiny(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, one epoch on the sample;
    treat as read-only)."""
    return trained_run


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
