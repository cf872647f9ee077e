"""The one config loader: defaults, file, --set, and every malformed config's exact message."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomlkit
from conftest import MITDB, SAMPLE, error_line, one_error, quick_args

from heartcli.config import HeartConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_init_writes_every_key_with_a_comment_and_loads_back(heart, tmp_path):
    heart("config", "init", "h.toml")
    text = Path("h.toml").read_text()
    doc = tomlkit.parse(text)
    for section, body in HeartConfig().to_dict().items():
        for key in body:
            assert key in doc[section], f"{section}.{key} missing"
    # Every key line is preceded by a comment line.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"
    assert load_config("h.toml") == HeartConfig()


def test_init_refuses_to_overwrite(heart):
    heart("config", "init", "h.toml")
    result = heart("config", "init", "h.toml", expect=2)
    assert "error: h.toml already exists; pass --force to overwrite it" in result.stderr


def test_precedence_set_over_file_over_defaults(heart, tmp_path):
    cfg = write(tmp_path, "[train]\nepochs = 7\nlr = 0.01\n")
    shown = heart.json("config", "show", "--config", cfg, "--set", "train.lr=0.5")
    assert shown["train"]["epochs"] == 7
    assert shown["train"]["lr"] == 0.5
    assert shown["train"]["batch_size"] == 256
    # A bare word is taken as a string.
    shown = heart.json("config", "show", "--set", "data.split=inter-patient")
    assert shown["data"]["split"] == "inter-patient"


def test_show_keeps_user_comments(heart, tmp_path):
    cfg = write(tmp_path, "# my notes\n[train]\nepochs = 7  # short run\n")
    out = heart("config", "show", "--config", cfg, "--set", "train.epochs=9").stdout
    assert "# my notes" in out
    assert "epochs = 9  # short run" in out
    assert "batch_size = 256" in out


BAD_CONFIGS = [
    (
        "[train]\nepocs = 3\n",
        'c.toml:2 train.epocs: unknown key; did you mean "epochs"?',
    ),
    ("[trian]\nepochs = 3\n", 'c.toml:1 trian: unknown section; did you mean "train"?'),
    (
        '[train]\nlr = "fast"\n',
        'c.toml:2 train.lr: input should be a valid number (expected a number, got string "fast")',
    ),
    (
        "[train]\nepochs = 2.5\n",
        "c.toml:2 train.epochs: input should be a valid integer "
        "(expected an integer, got float 2.5)",
    ),
    (
        "[train]\nepochs = 0\n",
        "c.toml:2 train.epochs: input should be greater than or equal to 1 "
        "(expected a value >= 1, got integer 0)",
    ),
    (
        '[train]\noptimizer = "sgd"\n',
        "c.toml:2 train.optimizer: input should be 'adam' or 'adamw' "
        '(expected one of "adam" or "adamw", got string "sgd")',
    ),
    (
        "[model]\ndropout = 1.5\n",
        "c.toml:2 model.dropout: input should be less than 1 "
        "(expected a value < 1.0, got float 1.5)",
    ),
    (
        "[model]\nconv_layers = 3\n",
        "c.toml:1 model.channels: needs one entry per conv layer "
        "(expected 3 for conv_layers = 3, got 5)",
    ),
    (
        '[tracking]\ntensorboard = "yes"\n',
        "c.toml:2 tracking.tensorboard: input should be a valid boolean "
        '(expected true or false, got string "yes")',
    ),
    (
        '[data]\nlead = "V5"\n',
        "c.toml:2 data.lead: input should be 'channel0' or 'MLII' "
        '(expected one of "channel0" or "MLII", got string "V5")',
    ),
    ("train = 3\n", "c.toml:1 train: must be a table, got integer 3"),
    ("[train\n", "c.toml:1 UnexpectedCharError: Unexpected character"),
    (
        '[resample]\nstrategy = "smote"\ntarget = -5\n',
        "c.toml:3 resample.target: input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_malformed_config_exact_message(heart, tmp_path, text, message):
    cfg = write(tmp_path, text)
    result = heart("config", "show", "--config", cfg, expect=2)
    assert f"error: {tmp_path}/{message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_problem_at_once(heart, tmp_path):
    cfg = write(tmp_path, '[train]\nepocs = 3\nlr = "x"\n[model]\ndropout = 2\n')
    err = heart("config", "show", "--config", cfg, expect=2).stderr
    assert err.count("error:") == 3


def test_bad_overrides_name_the_override(heart):
    err = heart("config", "show", "--set", "train.lr=abc", "--set", "nokey", expect=2).stderr
    assert "error: --set nokey: expected section.key=value, e.g. --set train.epochs=5" in err
    err = heart("config", "show", "--set", "train.lr=abc", expect=2).stderr
    assert (
        "error: --set train.lr: input should be a valid number "
        '(expected a number, got string "abc")'
    ) in err


def test_missing_config_file(heart):
    err = heart("config", "show", "--config", "nope.toml", expect=2).stderr
    assert (
        "error: nope.toml: config file not found; create one with `heart config init nope.toml`"
    ) in err


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
