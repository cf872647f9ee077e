"""What every command shares: the app, output modes, common options and error handling."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from heartcli.errors import HeartError
from heartcli.redact import redact, redact_data

if TYPE_CHECKING:
    from heartcli.config import HeartConfig

GLOBAL_FLAGS = {"--json", "-q", "--quiet"}


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
        self.err.print(redact(message), highlight=False)

    def warn(self, message: str) -> None:
        """A warning goes to stderr even with -q."""
        Console(file=sys.stderr, soft_wrap=True).print(
            redact(message), highlight=False, markup=False
        )

    def result(self, data: Any, render: Callable[[], None] | None = None) -> None:
        """Emit a command's result: one JSON document with --json, else ``render()``."""
        if self.json:
            sys.stdout.write(json.dumps(redact_data(data), indent=2, default=str) + "\n")
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


GLOBAL_HELP = (
    "Global flags, anywhere on the line: --json prints the result (or the error) as one JSON "
    "document on stdout; -q/--quiet hides progress and logs. Exit codes: 0 success, "
    "1 runtime failure, 2 bad usage or config, 130 interrupted."
)

# Set while parsing the line, before any callback runs: errors need it to answer in JSON.
_json_requested = False


def json_requested() -> bool:
    return _json_requested or _current.json


def _takes_value(param: Any) -> bool:
    return (
        getattr(param, "param_type_name", "") == "option"
        and not getattr(param, "is_flag", False)
        and not getattr(param, "count", False)
    )


def split_global_flags(command: Any, args: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--json``/``-q``/``--quiet`` out of ``args`` wherever they stand, except where
    one is the value of an option (``--name -q``) or comes after ``--``."""
    flags: list[str] = []
    rest: list[str] = []
    current: Any = command
    value_next = False
    for i, arg in enumerate(args):
        if arg == "--":
            rest.extend(args[i:])
            break
        if value_next:
            rest.append(arg)
            value_next = False
            continue
        if arg in GLOBAL_FLAGS:
            flags.append(arg)
            continue
        rest.append(arg)
        if current is None:
            continue
        if arg in (getattr(current, "commands", None) or {}):
            current = current.commands[arg]
            continue
        if arg.startswith("-") and "=" not in arg:
            for param in current.params:
                if arg in (*param.opts, *getattr(param, "secondary_opts", ())):
                    value_next = _takes_value(param)
                    break
    return flags, rest


def readable_help(text: str) -> str:
    """Typer's raw type labels made readable, column widths kept: ``{RUN}`` -> ``RUN``,
    ``<list[Path]>`` -> ``<path>...``, ``<int range>`` -> ``<int>``."""

    def same_width(new: str, old: str) -> str:
        return new + " " * max(0, len(old) - len(new))

    text = re.sub(r"\{([A-Za-z_.\-]+)\}", r"\1", text)
    text = re.sub(
        r"<list\[([^\]]+)\]>",
        lambda m: same_width(f"<{m.group(1).lower()}>...", m.group(0)),
        text,
    )
    text = re.sub(r"<(int|float) range>", lambda m: same_width(f"<{m.group(1)}>", m.group(0)), text)
    return "\n".join(line.rstrip() for line in text.splitlines())


class HeartCommand(TyperCommand):
    """A sub-command whose --help ends with the global flags (--json, -q) and exit codes."""

    def get_help(self, ctx: Any) -> str:
        return readable_help(super().get_help(ctx))

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(GLOBAL_HELP)


class HeartGroup(TyperGroup):
    """Accepts the global flags anywhere on the line and turns every error into one red line
    (``error: ...``; with --json also ``{"error": ..., "exit_code": ...}`` on stdout)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        global _json_requested
        if ctx.parent is None:
            flags, rest = split_global_flags(self, args)
            _json_requested = "--json" in flags
            args = flags + rest
        return super().parse_args(ctx, args)

    def get_help(self, ctx: Any) -> str:
        return readable_help(super().get_help(ctx))

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        super().format_epilog(ctx, formatter)
        if ctx.parent is not None:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(GLOBAL_HELP)

    def invoke(self, ctx: Any) -> Any:
        try:
            with terminate_as_interrupt():
                return super().invoke(ctx)
        except HeartError as exc:
            report_error(str(exc), exc.exit_code, exc.result)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # a write or read no service turned into a HeartError
            report_error(os_error_line(exc), 1)
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM; errors.Interrupted says more
            report_error(f"interrupted: {exc}" if str(exc) else "interrupted", 130)
            ctx.exit(130)
        except Exception as exc:  # a library's own exception no service turned into a line
            line = foreign_error_line(exc)
            if line is None:
                raise  # a bug: its traceback, redacted (redacting_hooks)
            report_error(line, 1)
            ctx.exit(1)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's own errors (missing argument, bad option value) in heart's style, exit 2."""
        global _json_requested
        kwargs["standalone_mode"] = False
        if not standalone_mode:
            return super().main(*args, **kwargs)
        _json_requested = False
        try:
            value = super().main(*args, **kwargs)
        except typer.TyperException as exc:  # Click's errors: missing argument, bad value
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
                sys.exit(exc.exit_code)
            message = exc.format_message().replace("Value error, ", "").rstrip(".")
            if exc.exit_code == 2 and ctx is not None:
                message = f"{message}; see `{ctx.command_path} --help`"
            report_error(message, exc.exit_code)
            sys.exit(exc.exit_code)
        except typer.Abort:
            report_error("interrupted", 130)
            sys.exit(130)
        sys.exit(value if isinstance(value, int) else 0)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: runs stop cleanly and record themselves "interrupted"."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Libraries whose exceptions are about the outside world (a tracking server, the network):
# one line, never a traceback. Their text may hold a URL with its password: redacted.
FOREIGN = {"mlflow": "tracking", "requests": "network", "urllib3": "network"}


def foreign_error_line(exc: BaseException) -> str | None:
    root = type(exc).__module__.split(".")[0]
    if root not in FOREIGN:
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{FOREIGN[root]}: {redact(first)[:300]} ({type(exc).__name__})"


def redacting_hooks() -> None:
    """Whatever leaves the process outside heart's own lines goes through redact.py too: an
    uncaught exception's traceback (a bug), a thread's, and Python's warnings."""
    import traceback
    import warnings

    def excepthook(kind: Any, value: Any, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    def thread_hook(args: Any) -> None:
        if args.exc_type is SystemExit:
            return
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        sys.stderr.write(
            redact(f"exception in thread {getattr(args.thread, 'name', '?')}:\n{text}")
        )

    shown = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        shown(redact(str(message)), category, filename, lineno, file, line)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    warnings.showwarning = showwarning


def os_error_line(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    return (
        f"{where}: {exc.strerror or exc}; free some space, fix the permissions or choose "
        "another path"
    )


_LONG_NUMBER = re.compile(r"\d{33,}")


def _cut_number(m: re.Match[str]) -> str:
    """A number too long to echo whole (``--rows 99999...``): its start and its length."""
    return f"{m[0][:16]}...({len(m[0]):,} digits)"


def report_error(message: str, exit_code: int, result: Any = None) -> None:
    """One red ``error:`` line per line of ``message`` on stderr; with --json, also one JSON
    object on stdout, so a script that asked for JSON always gets JSON (with ``result``, what
    the command did before it failed, when there is one)."""
    lines = _LONG_NUMBER.sub(_cut_number, redact(str(message))).splitlines() or ["unknown error"]
    console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    for line in lines:
        console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)
    if json_requested():
        document = {"error": "\n".join(lines), "exit_code": exit_code}
        if len(lines) > 1:
            document["errors"] = lines
        if result is not None:
            document["result"] = redact_data(result)
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        sys.stdout.flush()


def make_app(help_text: str, *, completion: bool = False) -> typer.Typer:
    return typer.Typer(
        cls=HeartGroup,
        help=help_text,
        no_args_is_help=True,
        add_completion=completion,
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
        metavar="FILE",
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


def closing_lines(notes: Sequence[str] = (), wrote: Sequence[str | Path] = ()) -> None:
    """A rendered result's last lines: ``note: ...`` per note, then ``wrote A and B``."""
    console = out().console
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    if wrote:
        console.print(f"wrote {' and '.join(str(p) for p in wrote)}", highlight=False)


Detector = Literal["gqrs", "xqrs"] | None


def detector_option(help_text: str, **panel: Any) -> Any:
    """``--detector`` (gqrs or xqrs, no default shown) of `heart predict` and `heart evaluate
    --records`, with each command's help text."""
    return typer.Option("--detector", help=help_text, show_default=False, **panel)


Adapt = Literal["signal", "labels"] | None

ADAPT_HELP = (
    "Adapt a copy of the run's model to each recording with its learning period (the first "
    "--learning-period seconds; their beats are never scored): signal (no labels: BatchNorm "
    "statistics and the rhythm standardisation's centre re-estimated on those beats) or "
    "labels (the head fine-tuned on their .atr labels: the patient-specific protocol). Run "
    "folders only."
)


def adapt_option(**panel: Any) -> Any:
    """``--adapt signal|labels`` of `heart predict` and `heart evaluate --records`."""
    return typer.Option("--adapt", help=ADAPT_HELP, show_default=False, **panel)


def resolve_config(config: Path | None, overrides: Sequence[str] | None) -> HeartConfig:
    from heartcli.config import load_config  # pydantic: loaded by the commands that read one

    return load_config(config, list(overrides or ()))
