"""The `heart` command: one Typer app, one sub-command module per capability."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from heartcli import __version__
from heartcli.cli import config, evaluate, export, fetch, predict, resample, train, tune
from heartcli.cli._util import (
    HeartCommand,
    Output,
    json_requested,
    make_app,
    redacting_hooks,
    set_output,
)
from heartcli.threads import passive_openmp

app = make_app(
    "heart: ECG heartbeat classification on MIT-BIH, from raw PhysioNet records to an "
    "honestly evaluated, exported model.\n\n"
    "Global flags (anywhere on the line): --json prints the result as one JSON document on "
    "stdout (progress goes to stderr); -q/--quiet hides progress. "
    "Exit codes: 0 success, 1 runtime failure, 2 bad usage or config, 130 interrupted.",
    completion=True,
)
# Each command's module in cli/ is named after it and holds a function of the same name.
app.add_typer(config.app, name="config")
app.command("fetch", cls=HeartCommand)(fetch.fetch)
app.command("train", cls=HeartCommand)(train.train)
app.command("resample", cls=HeartCommand)(resample.resample)
app.command("evaluate", cls=HeartCommand)(evaluate.evaluate)
app.command("tune", cls=HeartCommand)(tune.tune)
app.command("export", cls=HeartCommand)(export.export)
app.command("predict", cls=HeartCommand)(predict.predict)


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
