"""The `heart` command: one Typer app, one sub-command module per capability."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from heartcli import __version__
from heartcli.cli import config_cmd, resample_cmd, train
from heartcli.cli import evaluate as evaluate_cmd
from heartcli.cli import export as export_cmd
from heartcli.cli import fetch as fetch_cmd
from heartcli.cli import predict as predict_cmd
from heartcli.cli._util import (
    HeartCommand,
    Output,
    json_requested,
    make_app,
    redacting_hooks,
    set_output,
)
from heartcli.cli.tune import tune_cmd
from heartcli.threads import passive_openmp

app = make_app(
    "heart: ECG heartbeat classification on MIT-BIH, from raw PhysioNet records to an "
    "honestly evaluated, exported model.\n\n"
    "Global flags (anywhere on the line): --json prints the result as one JSON document on "
    "stdout (progress goes to stderr); -q/--quiet hides progress. "
    "Exit codes: 0 success, 1 runtime failure, 2 bad usage or config, 130 interrupted.",
    completion=True,
)
app.add_typer(config_cmd.app, name="config")
app.command("fetch", cls=HeartCommand)(fetch_cmd.fetch)
app.command("train", cls=HeartCommand)(train.train)
app.command("resample", cls=HeartCommand)(resample_cmd.resample)
app.command("evaluate", cls=HeartCommand)(evaluate_cmd.evaluate)
app.command("tune", cls=HeartCommand)(tune_cmd)
app.command("export", cls=HeartCommand)(export_cmd.export)
app.command("predict", cls=HeartCommand)(predict_cmd.predict)


def _version(value: bool) -> None:
    if value:
        if json_requested():
            typer.echo(json.dumps({"name": "heart", "version": __version__}))
        else:
            typer.echo(f"heart {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    json_: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress and logs.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    set_output(Output(json=json_, quiet=quiet))


def main() -> None:
    passive_openmp()  # before anything loads torch (and with it libgomp)
    redacting_hooks()
    app()
