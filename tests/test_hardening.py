"""Hostile input through the CLI (issue 12): one `error:` line and exit 2 or 1, never a
traceback; the CLI conventions (choices, one meaning per flag, JSON on error)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import quick_args


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def one_error(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# --------------------------------------------------------------------------- configs


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
    line = one_error(heart("train", "--config", cfg, expect=None), 2)
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
    assert one_error(result, 2).startswith(f"error: {message}")
    assert not Path("runs").exists()


def test_every_float_must_be_finite(heart, sample_dir, tmp_path):
    cfg = tmp_path / "inf.toml"
    cfg.write_text("[train]\nlr = inf\n")
    line = one_error(heart("train", "--config", cfg, expect=None), 2)
    assert line == (
        f"error: {cfg}:2 train.lr: input should be a finite number "
        "(expected a finite number, got float inf)"
    )
    line = one_error(heart("config", "show", "--set", "model.dropout=nan", expect=None), 2)
    assert line.startswith("error: --set model.dropout: input should be a finite number")


def test_a_huge_config_is_refused_at_once_without_echo(heart, tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text("[train]\n" + "".join(f"# {'x' * 70}\n" for _ in range(20_000)))
    started = time.perf_counter()
    result = heart("config", "show", "--config", cfg, expect=None)
    assert time.perf_counter() - started < 5
    line = one_error(result, 2)
    assert line.startswith(f"error: {cfg}: 1,460,008 bytes is too big for a config file")
    assert result.stdout == ""


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", ["", "a\nb", "tab\there", "x" * 300, "../up", "-dash", "sp ace", ".."]
)
def test_unsafe_run_names_are_refused(heart, sample_dir, name):
    line = one_error(heart("train", *quick(sample_dir), "--name", name, expect=None), 2)
    assert line.startswith("error: --name")
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_unsafe_search_names_are_refused(heart, sample_dir):
    line = one_error(heart("tune", "-n", "a b", expect=None), 2)
    assert line.startswith("error: --name 'a b': a name is one folder name")


# --------------------------------------------------------------------------- tracking


def test_broken_mlflow_store_leaves_no_run_folder(heart, sample_dir, tmp_path):
    (tmp_path / "broken.db").write_bytes(b"this is not a sqlite database" * 100)
    uri = f"sqlite:///{tmp_path / 'broken.db'}"
    args = quick(sample_dir, f"tracking.uri={uri}", tracking=True)
    line = one_error(heart("train", *args, "--name", "b", expect=None), 1)
    assert line.startswith("error: tracking: cannot log to MLflow")
    assert not Path("runs/b").exists()
    # the name is free again: the same run trains once tracking is fixed
    heart("-q", "train", *quick(sample_dir), "--name", "b")
    assert json.loads(Path("runs/b/manifest.json").read_text())["status"] == "completed"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_unreachable_mlflow_server_fails_in_seconds(heart, sample_dir):
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    result = heart(
        "train", *quick(sample_dir, f"tracking.uri={uri}", tracking=True), "-n", "u", expect=None
    )
    assert time.perf_counter() - started < 30
    line = one_error(result, 1)
    assert line.startswith(f"error: tracking: cannot reach MLflow at {uri}")
    assert not Path("runs/u").exists()


def test_unreachable_mlflow_server_falls_back_to_local_when_asked(heart, sample_dir):
    uri = f"http://127.0.0.1:{closed_port()}"
    sets = (f"tracking.uri={uri}", "tracking.on_error=local")
    result = heart("train", *quick(sample_dir, *sets, tracking=True), "-n", "l")
    assert f"MLflow at {uri} is unreachable" in result.stderr
    manifest = json.loads(Path("runs/l/manifest.json").read_text())
    assert manifest["tracking"]["uri"].startswith("sqlite:///")
    assert manifest["tracking"]["run_id"]
    assert Path("mlflow.db").exists()


# --------------------------------------------------------------------------- runs


def test_every_file_of_a_run_has_the_same_permissions(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "p")
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in Path("runs/p").iterdir() if p.is_file()
    }
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_evaluate_says_when_the_run_is_unfinished(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "e")
    manifest_file = Path("runs/e/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["status"] == "completed"
    result = heart("evaluate", "runs/e")
    assert "warning" not in result.stderr
    assert json.loads(Path("runs/e/eval.json").read_text())["run_status"] == "completed"
    # A run stopped by kill -9 mid-training keeps the manifest it wrote when it started.
    manifest["status"] = "running"
    manifest_file.write_text(json.dumps(manifest))
    result = heart("-q", "evaluate", "runs/e")
    assert "warning: the run is running, not finished" in result.stderr
    written = json.loads(Path("runs/e/eval.json").read_text())
    assert written["run_status"] == "running"
    assert written["warning"].startswith("the run is running, not finished")


def test_predict_refuses_beats_far_outside_the_training_range(heart, sample_dir, tmp_path):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "r")
    lo, hi = json.loads(Path("runs/r/manifest.json").read_text())["data"]["input_range"]
    assert 0.0 <= lo < hi <= 1.0
    table = pq.read_table(sample_dir / "random" / "test.parquet")
    x = np.stack([table.column(str(i)).to_numpy() for i in range(187)], axis=1)[:50]
    ok = tmp_path / "ok.parquet"
    pq.write_table(pa.table({str(i): x[:, i] for i in range(187)}), ok)
    heart("-q", "predict", "runs/r", ok)
    raw = x.astype(np.float64) * 1e30
    bad = tmp_path / "raw.parquet"
    pq.write_table(pa.table({str(i): raw[:, i] for i in range(187)}), bad)
    line = one_error(heart("predict", "runs/r", bad, expect=None), 1)
    assert re.match(
        rf"error: {re.escape(str(bad))}: \d+ of 50 beats are far outside the range the model "
        r"was trained on \[",
        line,
    )


# --------------------------------------------------------------------------- CLI conventions


def test_json_on_error_prints_one_json_object_on_stdout(heart):
    result = heart("--json", "evaluate", "nowhere", expect=1)
    assert json.loads(result.stdout) == {
        "error": "nowhere: no such run folder; train one with `heart train`",
        "exit_code": 1,
    }
    assert result.stderr.startswith("error: nowhere: no such run folder")
    usage = heart("evaluate", "--json", expect=2)
    document = json.loads(usage.stdout)
    assert document["exit_code"] == 2
    assert document["error"].startswith("Missing argument 'RUN'")


def test_json_version(heart):
    from heartcli import __version__

    assert json.loads(heart("--json", "--version").stdout) == {
        "name": "heart",
        "version": __version__,
    }


def test_usage_errors_are_one_heart_line_exit_2(heart):
    for args, start in [
        (("evaluate",), "error: Missing argument 'RUN'"),
        (("tune", "--backend", "optuna"), "error: Invalid value for '--backend'"),
        (("train", "--bogus"), "error: No such option: --bogus"),
        (("export", "runs/x", "--format", "tflite"), "error: Invalid value for '--format'"),
    ]:
        result = heart(*args, expect=None)
        line = one_error(result, 2)
        assert line.startswith(start), line
        assert "Usage:" not in result.stderr and "Try '" not in result.stderr


def test_fixed_value_options_list_their_choices_in_help(heart):
    assert "<hyperopt|ray>" in heart("tune", "--help").stdout
    assert "onnx|pt2|torchscript|pte|all" in heart("export", "--help").stdout
    help_predict = heart("predict", "--help").stdout
    assert "<auto|annotations|detect>" in help_predict
    assert "auto|MLII|channel0" in help_predict
    line = one_error(heart("predict", "runs/x", "f.csv", "--peaks", "xqrs", expect=None), 2)
    assert line.startswith("error: Invalid value for '--peaks'")
    assert "--install-completion" in heart("--help").stdout


def test_short_n_means_name_everywhere(heart):
    for command in ("train", "tune"):
        text = heart(command, "--help").stdout
        assert re.search(r"-n, --name NAME", text), command
    assert "-n, --evals" not in heart("tune", "--help").stdout


def test_help_shows_readable_metavars_and_the_global_flags(heart):
    from test_cli import all_commands

    for path, command in all_commands():
        if hasattr(command, "commands"):
            continue
        text = heart(*path, "--help").stdout
        assert "--json" in text and "-q" in text, path
        assert not re.search(r"\{\w+\}|<int range>|<list\[|<float range>", text), (path, text)


def test_global_flags_do_not_swallow_option_values(heart, sample_dir):
    """`--name -q` names the run "-q" (refused as a name), it does not turn on quiet mode."""
    result = heart("train", *quick(sample_dir), "--name", "-q", expect=None)
    assert one_error(result, 2).startswith("error: --name '-q'")
    result = heart("config", "show", "--set", "tracking.experiment=--json")
    assert 'experiment = "--json"' in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_readme_says_which_commands_take_config_and_set(heart):
    from conftest import REPO
    from test_cli import all_commands

    readme = (REPO / "README.md").read_text()
    claim = re.search(r"`--config FILE` and `--set` are taken by ([^.]+)\.", readme)
    assert claim, "README must say which commands take --config and --set"
    named = set(re.findall(r"`heart ([a-z ]+?)`", claim.group(1)))
    takes = {
        " ".join(path)
        for path, command in all_commands()
        if not hasattr(command, "commands")
        and {"--config", "--set"} <= {o for p in command.params for o in p.opts}
    }
    assert named == takes


def test_export_restores_the_root_logger(heart, sample_dir, tmp_path):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "x")
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        heart(
            "-q",
            "export",
            "runs/x",
            "--format",
            "onnx",
            "--quantize",
            "dynamic",
            "--out",
            tmp_path / "e",
        )
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)
