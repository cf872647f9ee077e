"""`heart config init` and `heart config show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from heartcli.cli._util import ConfigOption, HeartCommand, SetOption, make_app, out, resolve_config
from heartcli.errors import UsageError
from heartcli.redact import redact

app = make_app("Write or show the TOML config that every command reads.")


@app.command("init", cls=HeartCommand)
def init(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", help="Where to write the config (default heart.toml)."),
    ] = Path("heart.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the complete default config, with a comment on every key."""
    from heartcli.config import HeartConfig, save_config
    from heartcli.io import check_output

    check_output(path, option="config init")  # a regular file, never a file heart keeps
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    save_config(HeartConfig(), path)
    o = out()
    o.result({"written": str(path)}, lambda: o.console.print(f"wrote {path}", highlight=False))


@app.command("show", cls=HeartCommand)
def show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the resolved config (file + --set over the defaults) as TOML, or JSON with --json."""
    from heartcli.config import dumps, load_document

    resolved = resolve_config(config, set_)
    base = load_document(config) if config is not None else None
    o = out()
    o.result(
        resolved.to_dict(),
        lambda: print(redact(dumps(resolved, base)), end=""),
    )
