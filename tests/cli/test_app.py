"""The CLI as a whole: help on every command, version, global flags, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import all_commands, error_line, quick_args

from heartcli import __version__


def test_every_command_has_help_text(heart):
    commands = list(all_commands())
    assert ("config",) in [p for p, _ in commands]
    for path, command in commands:
        assert (command.help or "").strip(), f"heart {' '.join(path)} has no help text"
        result = heart(*path, "--help")
        assert "Usage:" in result.stdout
        for param in command.params:
            if param.param_type_name == "option":
                assert (getattr(param, "help", "") or "").strip(), (
                    f"heart {' '.join(path)} {param.opts[0]} has no help text"
                )


def test_version(heart):
    assert heart("--version").stdout.strip() == f"heart {__version__}"


def test_json_flag_anywhere_on_the_line(heart):
    first = heart("--json", "config", "show").stdout
    last = heart("config", "show", "--json").stdout
    assert first == last
    assert first.lstrip().startswith("{")


def test_unknown_command_is_usage_error(heart):
    result = heart("frobnicate", expect=2)
    assert "No such command" in result.stderr


def test_python_m_heartcli_runs():
    done = subprocess.run(
        [sys.executable, "-m", "heartcli", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"heart {__version__}"


# --------------------------------------------- moved here from tests/test_hardening.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


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
        line = error_line(result, 2)
        assert line.startswith(start), line
        assert "Usage:" not in result.stderr and "Try '" not in result.stderr


def test_fixed_value_options_list_their_choices_in_help(heart):
    assert "<hyperopt|ray>" in heart("tune", "--help").stdout
    assert "onnx|pt2|torchscript|pte|all" in heart("export", "--help").stdout
    help_predict = heart("predict", "--help").stdout
    assert "<auto|annotations|detect>" in help_predict
    assert "auto|MLII|channel0" in help_predict
    line = error_line(heart("predict", "runs/x", "f.csv", "--peaks", "xqrs", expect=None), 2)
    assert line.startswith("error: Invalid value for '--peaks'")
    assert "--install-completion" in heart("--help").stdout


def test_short_n_means_name_everywhere(heart):
    for command in ("train", "tune"):
        text = heart(command, "--help").stdout
        assert re.search(r"-n, --name NAME", text), command
    assert "-n, --evals" not in heart("tune", "--help").stdout


def test_help_shows_readable_metavars_and_the_global_flags(heart):

    for path, command in all_commands():
        if hasattr(command, "commands"):
            continue
        text = heart(*path, "--help").stdout
        assert "--json" in text and "-q" in text, path
        assert not re.search(r"\{\w+\}|<int range>|<list\[|<float range>", text), (path, text)


def test_global_flags_do_not_swallow_option_values(heart, sample_dir):
    """`--name -q` names the run "-q" (refused as a name), it does not turn on quiet mode."""
    result = heart("train", *quick(sample_dir), "--name", "-q", expect=None)
    assert error_line(result, 2).startswith("error: --name '-q'")
    result = heart("config", "show", "--set", "tracking.experiment=--json")
    assert 'experiment = "--json"' in result.stdout
    assert not result.stdout.lstrip().startswith("{")
