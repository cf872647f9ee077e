"""What every command shares: the app, output modes, common options and error handling."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from heartcli.config import HeartConfig, load_config
from heartcli.errors import HeartError

GLOBAL_FLAGS = {"--json", "-q", "--quiet"}


def training_split(config: HeartConfig) -> Any:
    """The training split with ``[data] classes`` applied (None: training loads it itself)."""
    from heartcli.dataset import load_split

    if not config.data.classes:
        return None
    return load_split(config.data.dir, config.data.split, "train", classes=config.data.classes)


@dataclass
class Output:
    """How a command talks: a result on stdout (a rich rendering, or JSON), the rest on stderr."""

    json: bool = False
    quiet: bool = False
    _stdout: Console | None = field(default=None, repr=False)
    _stderr: Console | None = field(default=None, repr=False)

    @property
    def console(self) -> Console:
        """Stdout console for results (tables); unused in --json mode."""
        if self._stdout is None:
            self._stdout = Console(file=sys.stdout, soft_wrap=False)
        return self._stdout

    @property
    def err(self) -> Console:
        """Stderr console for progress and logs; silent with -q."""
        if self._stderr is None:
            self._stderr = Console(file=sys.stderr, quiet=self.quiet)
        return self._stderr

    def log(self, message: str) -> None:
        self.err.print(message, highlight=False)

    def result(self, data: Any, render: Callable[[], None] | None = None) -> None:
        """Emit a command's result: one JSON document with --json, else ``render()``."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render()


_current = Output()


def set_output(output: Output) -> None:
    """Called by the root callback once per invocation with the global flags."""
    global _current
    _current = output


def out() -> Output:
    """The output settings of the running invocation."""
    return _current


class HeartGroup(TyperGroup):
    """Accepts the global flags anywhere on the line and turns HeartError into one red line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            head, tail = args[:cut], args[cut:]
        else:
            head, tail = args, []
        flags = [a for a in head if a in GLOBAL_FLAGS]
        rest = [a for a in head if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + tail)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except HeartError as exc:
            report_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            ctx.exit(130)


def report_error(exc: HeartError) -> None:
    console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    for line in str(exc).splitlines() or ["unknown error"]:
        console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)


def make_app(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=HeartGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (heart config init writes one); defaults apply without it.",
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="SECTION.KEY=VALUE",
        help="Override one config key, e.g. --set train.epochs=5 (repeatable).",
    ),
]


def resolve_config(config: Path | None, overrides: Sequence[str] | None) -> HeartConfig:
    return load_config(config, list(overrides or ()))
