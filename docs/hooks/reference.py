"""MkDocs hook: the command reference from the Typer app, the config reference from the schema.

Both are rendered when the site is built, from the objects the program itself uses, so the
site cannot drift from the code: the commands, arguments and options with their help, as
`heart COMMAND --help` prints them (``typer.main.get_command(app)``, Click's own objects),
and every key of the TOML config with its type, default, bounds and the description the
schema gives it (``heartcli.config.SECTIONS``, pydantic's ``Field``s).

A page asks for a reference with a marker on a line of its own:

    <!-- heart:commands -->        heart's own options (the global flags) and its commands
    <!-- heart:command tune -->    one command (``config init`` for a subcommand)
    <!-- heart:config train -->    one config section: every key of ``[train]``

The build fails (whether or not ``--strict``) when a marker names no command or section,
when a command or a section has no page, or when one has two.
"""

from __future__ import annotations

import inspect
import posixpath
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Document the checkout being built, whichever heart the environment has installed (an
# editable install may point at another one).
REPO = Path(__file__).resolve().parents[2]


def this_checkout() -> None:
    """Put the checkout first on sys.path, before heartcli is imported. (MkDocs takes its own
    first entry back after loading a hook, so ``on_config`` calls this again.)"""
    if sys.path[:1] != [str(REPO)]:
        sys.path.insert(0, str(REPO))


this_checkout()

MARKER = re.compile(r"^<!-- heart:(commands|command|config)(?: ([a-z][a-z _-]*?))? -->$", re.M)


# ---------------------------------------------------------------------------------------------
# Markdown helpers


def md(text: str) -> str:
    """Plain help text as Markdown that shows it as written: `code spans` are kept, and outside
    them the characters Markdown would read as markup or HTML are escaped."""
    parts = re.split(r"(`[^`\n]+`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part)
            continue
        part = re.sub(r"([\\*_\[\]|])", r"\\\1", part)
        out.append(part.replace("<", "&lt;").replace(">", "&gt;"))
    return "".join(out)


def cell(text: str) -> str:
    """One table cell: one line, Markdown-escaped (a `|` in a code span needs no escape: the
    tables extension does not split a row inside one)."""
    return md(" ".join(text.split()))


def paragraphs(text: str) -> str:
    """A help text's paragraphs (blank-line separated, hard-wrapped) as Markdown."""
    blocks = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(md(block) for block in blocks if block)


def indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else "" for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# The command reference


def root_command() -> Any:
    import typer.main

    from heartcli.cli.app import app

    return typer.main.get_command(app)


def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of the app, in its own order: ``("config", "init")``."""

    def walk(group: Any, prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        for name, command in group.commands.items():
            yield (*prefix, name)
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))

    return list(walk(root_command(), ()))


def contexts(path: tuple[str, ...]) -> tuple[Any, Any]:
    """The command at ``path`` and a Click context whose parents make its usage line whole."""
    command = root_command()
    ctx = command.context_class(command, info_name="heart", **command.context_settings)
    for name in path:
        if name not in getattr(command, "commands", {}):
            raise KeyError(" ".join(path))
        command = command.commands[name]
        ctx = command.context_class(command, info_name=name, parent=ctx, **command.context_settings)
    return command, ctx


def usage(command: Any, ctx: Any) -> str:
    """The usage line without its ``Usage:``, as ``--help`` prints it."""
    from heartcli.cli._util import readable_help

    return readable_help(command.get_usage(ctx)).removeprefix("Usage: ").strip()


def _readable(text: str) -> str:
    from heartcli.cli._util import readable_help

    return " ".join(readable_help(text).split())


def param_rows(command: Any, ctx: Any, kind: str) -> list[tuple[str, str]]:
    """(``-c, --config FILE``, help with its default and range) of each visible parameter."""
    rows = []
    for param in command.params:
        if param.param_type_name != kind:
            continue
        record = param.get_help_record(ctx)
        if record is not None:
            rows.append((_readable(record[0]), _readable(record[1])))
    return rows


def param_table(rows: list[tuple[str, str]], head: str) -> str:
    lines = [f"| {head} | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {cell(text)} |" for name, text in rows]
    return "\n".join(lines)


def help_text(command: Any) -> str:
    return inspect.cleandoc(command.help or "").split("\f")[0]


def render_command(path: tuple[str, ...], links: dict[str, str]) -> str:
    """The reference of ``heart PATH``: usage, help, arguments, options, subcommands and the
    exact ``--help``. ``links`` maps a command (``"config init"``; ``""`` for heart itself)
    to its page, relative to the page being built."""
    command, ctx = contexts(path)
    parts = [f"```text\n{usage(command, ctx)}\n```", paragraphs(help_text(command))]
    arguments = param_rows(command, ctx, "argument")
    if arguments:
        parts.append(param_table(arguments, "argument"))
    options = param_rows(command, ctx, "option")
    if options:
        parts.append(param_table(options, "option"))
    if hasattr(command, "commands"):
        parts.append(subcommand_table(command, path, links))
    else:
        parts.append(
            "The global flags `--json` and `-q/--quiet` work here too, anywhere on the line "
            f"([heart's own options]({links['']}))."
        )
    parts.append(full_help(" ".join(("heart", *path, "--help")), command.get_help(ctx)))
    return "\n\n".join(p for p in parts if p)


def subcommand_table(group: Any, path: tuple[str, ...], links: dict[str, str]) -> str:
    lines = ["| command | what it does |", "|---|---|"]
    for name, command in group.commands.items():
        full = " ".join((*path, name))
        target = links.get(full)
        label = f"`heart {full}`"
        label = f"[{label}]({target})" if target else label
        lines.append(f"| {label} | {cell(help_text(command).split(chr(10) * 2)[0])} |")
    return "\n".join(lines)


def render_root(links: dict[str, str]) -> str:
    """heart's own options (the global flags, the version, shell completion) and its commands."""
    command, ctx = contexts(())
    parts = [
        f"```text\n{usage(command, ctx)}\n```",
        paragraphs(help_text(command)),
        param_table(param_rows(command, ctx, "option"), "option"),
        subcommand_table(command, (), links),
    ]
    parts.append(full_help("heart --help", command.get_help(ctx)))
    return "\n\n".join(parts)


def full_help(title: str, text: str) -> str:
    """The exact ``--help`` text, folded away under its command line."""
    return f'??? note "`{title}`"\n\n' + indented(f"```text\n{text}\n```")


# ---------------------------------------------------------------------------------------------
# The config reference


def sections() -> dict[str, Any]:
    from heartcli.config import SECTIONS

    return dict(SECTIONS)


def type_name(annotation: Any) -> str:
    """A schema annotation in words: ``list[int]`` -> "list of integers"."""
    words = {int: "integer", float: "number", bool: "boolean", str: "string", Any: "any value"}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in words:
        return words[annotation]
    if origin is typing.Literal:
        return "string" if all(isinstance(a, str) for a in args) else "one of"
    if origin is list:
        inner = type_name(args[0])
        return f"list of {inner}s" if inner in words.values() else "list"
    if origin is dict:
        return "table"
    if args:  # a union: int | str
        return " or ".join(type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def allowed(annotation: Any, metadata: list[Any]) -> str:
    """The values a key accepts beyond its type: its choices, or its bounds (``0 ≤ x < 1``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and typing.get_origin(args[0]) is typing.Literal:
        return "each of " + ", ".join(f"`{toml_value(a)}`" for a in typing.get_args(args[0]))
    if origin is typing.Literal:
        return ", ".join(f"`{toml_value(a)}`" for a in args)
    low = high = ""
    for item in metadata:
        for attr, sign, side in (
            ("ge", "≤", "low"),
            ("gt", "<", "low"),
            ("le", "≤", "high"),
            ("lt", "<", "high"),
        ):
            bound = getattr(item, attr, None)
            if bound is not None:
                text = f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"
                if side == "low":
                    low = f"{text} {sign} "
                else:
                    high = f" {sign} {text}"
    return f"{low}x{high}" if low or high else ""


def toml_value(value: Any) -> str:
    """A default as it is written in the TOML file."""
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def render_section(name: str) -> str:
    """The reference of ``[name]``: its docstring, then one row per key, then the section as
    ``heart config init`` writes it."""
    from heartcli.config import HeartConfig, dumps

    model = sections()[name]
    defaults = HeartConfig().to_dict()[name]
    lines = [
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, field in model.model_fields.items():
        lines.append(
            f"| `{key}` | {type_name(field.annotation)} | `{toml_value(defaults[key])}` "
            f"| {allowed(field.annotation, field.metadata)} | {cell(field.description or '')} |"
        )
    written = section_text(dumps(HeartConfig()), name)
    parts = [
        paragraphs(inspect.cleandoc(model.__doc__ or "")),
        "\n".join(lines),
        f'??? example "`[{name}]` as `heart config init` writes it"\n\n'
        + indented(f"```toml\n{written}\n```"),
    ]
    return "\n\n".join(p for p in parts if p)


def section_text(document: str, name: str) -> str:
    """The lines of ``[name]`` (and its sub-tables) in a whole config file."""
    keep, lines = False, []
    for line in document.splitlines():
        header = re.match(r"^\[([a-z_.]+)\]$", line)
        if header:
            keep = header.group(1).split(".")[0] == name
        if keep:
            lines.append(line)
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------------------------
# The hook


def markers(text: str) -> Iterator[tuple[str, str]]:
    for match in MARKER.finditer(text):
        yield match.group(1), (match.group(2) or "").strip()


# "commands", "command tune", "config train" -> the page that holds it (set by on_files)
PAGES: dict[str, str] = {}


def on_config(config: Any) -> Any:
    """Every build reads the code afresh: `mkdocs serve` rebuilds when heartcli/cli or
    heartcli/config change (``watch:`` in mkdocs.yml), so the references follow an edit."""
    this_checkout()
    for name in [m for m in sys.modules if m == "heartcli" or m.startswith("heartcli.")]:
        del sys.modules[name]
    return config


def _fail(message: str) -> None:
    from mkdocs.exceptions import PluginError

    raise PluginError(f"heart reference: {message}")


def on_files(files: Any, config: Any) -> Any:
    """Find each marker's page before any page renders, and check every command and section
    has exactly one."""
    found: dict[str, str] = {}
    for file in files.documentation_pages():
        for kind, name in markers(file.content_string):
            key = "commands" if kind == "commands" else f"{kind} {name}"
            if key in found:
                _fail(f"{key} is on both {found[key]} and {file.src_uri}")
            found[key] = file.src_uri
    wanted = ["commands"] + [f"command {' '.join(p)}" for p in command_paths()]
    wanted += [f"config {name}" for name in sections()]
    missing = [key for key in wanted if key not in found]
    unknown = [key for key in found if key not in wanted]
    if missing:
        _fail("no page for " + ", ".join(missing) + " (add its <!-- heart:... --> marker)")
    if unknown:
        _fail("no such command or config section: " + ", ".join(unknown))
    PAGES.clear()
    PAGES.update(found)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    here = posixpath.dirname(page.file.src_uri) or "."
    links = {
        ("" if key == "commands" else key.removeprefix("command ")): posixpath.relpath(src, here)
        for key, src in PAGES.items()
        if not key.startswith("config ")
    }

    def render(match: re.Match[str]) -> str:
        kind, name = match.group(1), (match.group(2) or "").strip()
        if kind == "commands":
            return render_root(links)
        if kind == "command":
            return render_command(tuple(name.split()), links)
        return render_section(name)

    return MARKER.sub(render, markdown)
