"""Loading, overriding and writing a config.

Precedence, in this one place: ``--set`` overrides > the TOML file > the defaults of
:mod:`heartcli.config.schema`. The file is read with tomlkit (so comments survive a round
trip) and validated with the strict schema. Every problem is reported at once, one line
each: ``FILE:LINE section.key: message (expected ..., got ...)``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
import tomlkit.items
from pydantic import (
    ValidationError,
)

from heartcli.config.bounds import MAX_MINUTES
from heartcli.config.schema import SECTIONS, HeartConfig
from heartcli.errors import ConfigError, DataError, UsageError
from heartcli.io import read_bounded, write_text

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; a bigger file is a mistake, not a config

# --------------------------------------------------------------------------- loading


_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
_ASSIGN = re.compile(r'^\s*("?[A-Za-z0-9_.\-"]+"?)\s*=')


def _toml_lines(text: str) -> Iterator[tuple[int, tuple[str, ...], bool]]:
    """``(line, dotted path, is a table header)`` for every table header and key of a TOML
    text; a key's path starts with its table's."""
    table: tuple[str, ...] = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = tuple(part.strip().strip('"') for part in m.group(1).split("."))
            yield lineno, table, True
        elif m := _ASSIGN.match(line):
            yield lineno, table + tuple(p.strip().strip('"') for p in m.group(1).split(".")), False


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map ``(section, key)`` and ``(section,)`` to their 1-based line in a TOML text."""
    index: dict[tuple[str, ...], int] = {}
    for lineno, path, _ in _toml_lines(text):
        index.setdefault(path, lineno)
    return index


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {_cut(str(value), 'digits')}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f'string "{_cut(value, "characters")}"'
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _cut(text: str, unit: str, keep: int = 32) -> str:
    """An echoed value of at most ``keep`` characters: a long one is cut, its length said."""
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}...{text[-4:]} ({len(text):,} {unit})"


def _expected(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    simple = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "list_type": "an array",
        "dict_type": "a table",
        "model_type": "a table",
        "int_from_float": "an integer",
        "finite_number": "a finite number",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return "one of " + str(ctx.get("expected", "")).replace("'", '"')
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return "a value " + bounds[kind].format(**ctx)
    return ""


def _validate(
    data: dict[str, Any],
    *,
    source: str,
    lines: dict[tuple[str, ...], int],
    overridden: frozenset[tuple[str, ...]] = frozenset(),
) -> HeartConfig:
    problems: list[str] = []

    def where(path: tuple[str, ...]) -> str:
        """The most specific place that set ``path``: --set, or the file's line of its key."""
        for n in range(len(path), 0, -1):
            if path[:n] in overridden:
                return "--set"
        for n in range(len(path), 0, -1):
            if path[:n] in lines:
                return f"{source}:{lines[path[:n]]}"
        return source

    # Unknown sections and keys, with a did-you-mean; they are set aside so that the
    # remaining keys are still checked and every problem is reported at once.
    known: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            hint = difflib.get_close_matches(section, list(SECTIONS), n=1)
            tip = (
                f'; did you mean "{hint[0]}"?' if hint else f"; sections are {', '.join(SECTIONS)}"
            )
            problems.append(f"{where((section,))} {section}: unknown section{tip}")
            continue
        if not isinstance(body, dict):
            problems.append(
                f"{where((section,))} {section}: must be a table, got {_describe(body)}"
            )
            continue
        fields = SECTIONS[section].model_fields
        known[section] = {}
        for key, value in body.items():
            if key in fields:
                known[section][key] = value
                continue
            hint = difflib.get_close_matches(key, list(fields), n=1)
            tip = f'; did you mean "{hint[0]}"?' if hint else ""
            problems.append(f"{where((section, key))} {section}.{key}: unknown key{tip}")

    try:
        config = HeartConfig.model_validate(known)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            # ("search", "space", "train.lr") is found at the line of the key "train.lr"
            path = tuple(part for p in loc for part in p.split("."))
            dotted = ".".join(loc)
            message = err["msg"]
            if message.startswith("Value error, "):
                # Model-level checks start their message with the key they are about.
                message = message.removeprefix("Value error, ")
                key, _, rest = message.partition(": ")
                if rest and len(loc) == 1:
                    path, dotted, message = (loc[0], key), f"{loc[0]}.{key}", rest
                problems.append(f"{where(path)} {dotted}: {message}")
                continue
            got = _lookup(data, loc)
            expected = _expected(err)
            detail = f" (expected {expected}, got {_describe(got)})" if expected else ""
            problems.append(f"{where(path)} {dotted}: {message[:1].lower() + message[1:]}{detail}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _lookup(data: Any, loc: tuple[str, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def parse_override(item: str) -> tuple[tuple[str, str], Any]:
    """Parse ``section.key=value``; the value is TOML, or a bare string when it is not TOML."""
    if "=" not in item:
        raise ConfigError(
            [f'--set {item}: expected section.key=value, e.g. --set train.epochs=5 (got "{item}")']
        )
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            [f'--set {item}: the key must be section.key, e.g. train.lr (got "{dotted.strip()}")']
        )
    raw = raw.strip()
    try:
        value = tomlkit.parse(f"v = {raw}")["v"]
        value = value.unwrap() if hasattr(value, "unwrap") else value
    except tomlkit.exceptions.TOMLKitError:
        value = raw
    return (parts[0], parts[1]), value


def option_overrides(**options: Any) -> list[str]:
    """Command-line options that stand for config keys, as the ``--set`` items they mean.

    One precedence for every command: defaults < the config file < ``--set`` < these
    options (the CLI puts their items after the ``--set`` ones, and the last item of a key
    wins). An option is named ``section_key`` (``train_max_minutes`` is
    ``train.max_minutes``); None means not given and gives no item.

    ``max_minutes`` is checked here, each command keeping its own meaning of 0:

    - ``train_max_minutes`` (`heart train --max-minutes`, given as text): a positive
      finite number; 0 is refused (no budget is no option);
    - ``search_max_minutes`` (`heart tune --max-minutes`): a finite number from 0 to
      MAX_MINUTES, 0 = no budget.
    """
    items: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        section, key = name.split("_", 1)
        if name == "train_max_minutes":
            value = _positive_minutes(value)
        elif name == "search_max_minutes":
            value = _search_minutes(float(value))
        if isinstance(value, bool):
            text = str(value).lower()
        else:
            text = f'"{value}"' if isinstance(value, str) else str(value)
        items.append(f"{section}.{key}={text}")
    return items


def _positive_minutes(raw: Any) -> float:
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes <= 0:
        raise UsageError(f"--max-minutes {raw!r}: expected a positive number of minutes, e.g. 15")
    return minutes


def _search_minutes(minutes: float) -> float:
    if not (math.isfinite(minutes) and 0 <= minutes <= MAX_MINUTES):
        raise UsageError(
            f"--max-minutes {minutes}: give minutes from 0 (no budget) to {MAX_MINUTES:,}"
        )
    return minutes


def read_config_text(path: str | Path) -> str:
    """The text of a config file: one that is missing, unreadable, not a regular file (a
    FIFO, a device: never opened in a way that blocks) or over 1 MB is refused."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            [f"{path}: config file not found; create one with `heart config init {path}`"]
        )
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"{path}: {size:,} bytes is too big for a config file (at most "
                f"{MAX_CONFIG_BYTES:,}); pass the TOML config, not a data file"
            ]
        )
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES, "config")
    except DataError as exc:
        raise ConfigError(
            [f"{exc} (a TOML config of at most {MAX_CONFIG_BYTES:,} bytes)"]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc})"]) from None


def _first_duplicate(text: str) -> tuple[int, str] | None:
    """``(line, key)`` of the first key or table a TOML text defines twice, or None.

    heart's own scan, so the message does not hang on the TOML parser's wording (tomlkit
    0.15 calls a duplicate a ParseError, older releases KeyAlreadyPresent). An array of
    tables (``[[name]]``) may repeat: each entry starts its keys afresh."""
    seen: set[tuple[str, ...]] = set()
    lines = text.splitlines()
    for lineno, path, header in _toml_lines(text):
        if header and lines[lineno - 1].lstrip().startswith("[["):
            seen = {p for p in seen if p[: len(path)] != path}
            continue
        if path in seen:
            return lineno, path[-1]
        seen.add(path)
    return None


_last_parsed: dict[str, tuple[str, tomlkit.TOMLDocument]] = {}


def load_document(path: str | Path) -> tomlkit.TOMLDocument:
    """The TOML document of the config at ``path``. A command reads its config twice (the
    values, then the comments config.toml keeps): the second read of the same text is a
    copy of the first parse, not a second one (tomlkit takes seconds on a 1 MB file)."""
    text = read_config_text(path)
    last = _last_parsed.get(str(path))
    if last is not None and last[0] == text:
        return copy.deepcopy(last[1])
    document = _parse_document(path)
    _last_parsed.clear()
    _last_parsed[str(path)] = (text, copy.deepcopy(document))
    return document


def _parse_document(path: str | Path) -> tomlkit.TOMLDocument:
    path = Path(path)
    text = read_config_text(path)
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as exc:
        problem = _first_duplicate(text)
        if problem is not None:
            line, key = problem
            raise ConfigError(
                [
                    f'{path}:{line} {key}: defined twice (key "{key}" already exists); keep one'
                    " of them"
                ]
            ) from None
        if isinstance(exc, tomlkit.exceptions.ParseError):
            raise ConfigError(
                [f"{path}:{exc.line} {exc.__class__.__name__}: {exc}; fix the TOML syntax"]
            ) from None
        raise ConfigError([f"{path}: not valid TOML ({exc}); fix the TOML syntax"]) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> HeartConfig:
    """Resolve a config: defaults < the TOML file at ``path`` < ``--set`` overrides."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "defaults"
    if path is not None:
        doc = load_document(path)
        data = doc.unwrap()
        lines = _line_index(doc.as_string())
        source = str(path)
    problems: list[str] = []
    overridden: set[tuple[str, ...]] = set()
    for item in overrides:
        try:
            (section, key), value = parse_override(item)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if section not in data:
            overridden.add((section,))
        body = data.setdefault(section, {})
        if not isinstance(body, dict):
            problems.append(f"--set {item}: {section} is not a table")
            continue
        body[key] = value
        overridden.add((section, key))
    if problems:
        raise ConfigError(problems)
    return _validate(data, source=source, lines=lines, overridden=frozenset(overridden))


# --------------------------------------------------------------------------- writing


def _comment_lines(text: str, width: int = 88) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, break_on_hyphens=False) or [text]


def to_document(
    config: HeartConfig, base: tomlkit.TOMLDocument | None = None
) -> tomlkit.TOMLDocument:
    """The config as a commented TOML document.

    With ``base`` (the user's own file), its comments and layout are kept and only values
    that differ, or keys it lacks, are written; without it every key gets its description.
    """
    doc = base if base is not None else tomlkit.document()
    if base is None:
        doc.add(tomlkit.comment("heart config: every command reads this file (heart --help)."))
        doc.add(tomlkit.comment("Precedence: --set section.key=value > this file > defaults."))
    values = config.to_dict()
    for section, model in SECTIONS.items():
        if section not in doc:
            table = tomlkit.table()
            if model.__doc__:
                for line in _comment_lines(model.__doc__.strip()):
                    table.add(tomlkit.comment(line))
            doc.add(tomlkit.nl())
            doc.add(section, table)
        table = doc[section]
        for key, field in model.model_fields.items():
            value = values[section][key]
            if key in table:
                current = table[key]
                current = current.unwrap() if hasattr(current, "unwrap") else current
                if current != value:
                    table[key] = value
                continue
            if field.description:
                for line in _comment_lines(field.description):
                    table.add(tomlkit.comment(line))
            if isinstance(value, dict):
                sub = tomlkit.table()
                for k, v in value.items():
                    sub[k] = v
                table.add(key, sub)
            else:
                table.add(key, value)
    return doc


def dumps(config: HeartConfig, base: tomlkit.TOMLDocument | None = None) -> str:
    return tomlkit.dumps(to_document(config, base))


def save_config(
    config: HeartConfig, target: str | Path, base: tomlkit.TOMLDocument | None = None
) -> None:
    """Write the resolved config (comments of ``base`` kept) atomically."""
    write_text(target, dumps(config, base))
