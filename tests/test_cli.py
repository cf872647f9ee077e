"""The CLI as a whole: help on every command, version, global flags, exit codes."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from heartcli import __version__
from heartcli.cli.app import app


def all_commands(group=None, prefix=()):
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path, command
        if hasattr(command, "commands"):
            yield from all_commands(command, path)


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
