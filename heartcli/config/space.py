"""The `[search.space]` grammar: parse a space and check it against the config's sections.

A space maps config keys (``section.key``) to distributions::

    "train.lr" = {loguniform = [1e-5, 1e-2]}
    "model.dropout" = {uniform = [0.1, 0.5]}
    "train.batch_size" = {choice = [16, 32, 64, 128]}
    "train.epochs" = {quniform = [5, 50, 1]}        # integers when all three are integers
    "model.attention" = {bool = true}
    "model.fc" = {each = [{choice = [128, 256]}, {choice = [64, 128]}]}   # one per list item
    "model.conv_layers" = {choice = [2, 3, 4]}
    "model.channels" = {per_layer = [{choice = [32, 64]}, {choice = [64, 96]}, ...]}
    "model.pooling" = {per_layer = {choice = ["max", "avg", "none"]}}     # same for every layer

``per_layer`` keys (``model.channels``, ``model.kernel_sizes``, ``model.pooling``) exist only
for the layers a trial has: the layer count is chosen first (an ``hp.choice`` over
``model.conv_layers``), and every branch has its own per-layer parameters, so TPE models
each depth on its own. A list of ``per_layer`` entries needs one entry per possible layer.

Keys that exist only under one choice of another key work the same way, with ``when``
beside a ``choice`` or ``bool``: the choice is drawn first, and each option has its own
keys (plain distributions or ``each``), which a trial of another option neither draws nor
sets (its config keeps the file's value)::

    "model.rhythm" = {bool = true, when = {true = {
        "model.rhythm_columns" = {choice = [["rr_pre_local", "rr_post_pre"], [...]]},
        "model.rhythm_wide" = {bool = true},
    }}}

An option named under ``when`` must be one of the choice's (``true``/``false`` for a bool,
a choice's value as text); a key under ``when`` is not also searched at the top level, and
``when`` does not nest.

A parsed :class:`Space` becomes hyperopt expressions, and a sample of them config values, in
:mod:`heartcli.config.sampling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, get_args

from pydantic import ConfigDict, TypeAdapter, ValidationError

KINDS = ("choice", "uniform", "loguniform", "quniform", "bool")
WHEN = "when"  # the keys under each option of a choice (see the module docstring)
QUNIFORM_MAX_STEPS = 100_000  # a grid of (high - low) / q steps; more is a typo, not a search
PER_LAYER_KEYS = ("model.channels", "model.kernel_sizes", "model.pooling")
LAYERS_KEY = "model.conv_layers"


class SpaceError(ValueError):
    """One problem with one key of the space: ``key`` and a message."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class SpaceProblems(ValueError):
    """Several problems of one key (the keys under its ``when``), each a SpaceError."""

    def __init__(self, problems: list[SpaceError]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class Dist:
    """One distribution: ``kind`` in KINDS and its arguments."""

    kind: str
    args: tuple[Any, ...]

    def values(self) -> list[Any] | None:
        """The finite set of values, for choice, bool and integer quniform; else None."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "bool":
            return [False, True]
        if self.kind == "quniform" and all(isinstance(a, int) for a in self.args):
            low, high, q = self.args
            return list(range(low, high + 1, q))
        return None

    def describe(self) -> str:
        return f"{{{self.kind} = {list(self.args) if self.kind != 'bool' else 'true'}}}"


@dataclass(frozen=True)
class Param:
    """One key of the space: a plain distribution, one per list item, or one per conv layer;
    a choice may carry the keys that exist only under each of its options (``when``)."""

    key: str
    dist: Dist | None = None
    each: tuple[Dist, ...] | None = None
    per_layer: tuple[Dist, ...] | None = None  # one per possible layer (repeated if shared)
    when: tuple[tuple[Any, tuple[Param, ...]], ...] | None = None  # (option, its keys) each


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        """Every key a trial may set, those under a ``when`` too (each once, in order)."""
        return list(dict.fromkeys(p.key for p in self.all_params()))

    def param(self, key: str) -> Param | None:
        """The top-level parameter of ``key`` (None when absent or only under a ``when``)."""
        return next((p for p in self.params if p.key == key), None)

    def all_params(self) -> list[Param]:
        """The top-level parameters and, after each, the ones under its ``when`` options."""
        out: list[Param] = []
        for p in self.params:
            out.append(p)
            for _, subs in p.when or ():
                out.extend(subs)
        return out


# --------------------------------------------------------------------------- parsing


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_dist(key: str, spec: Any) -> Dist:
    """``{kind = args}`` -> Dist, or SpaceError naming ``key``."""
    kinds = ", ".join(KINDS)
    if not isinstance(spec, dict) or len(spec) != 1:
        got = f"a table with {len(spec)} keys" if isinstance(spec, dict) else _fmt(spec)
        raise SpaceError(
            key,
            f"a distribution is a table with one of {kinds}, "
            f"e.g. {{choice = [16, 32]}} (got {got})",
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        import difflib

        hint = difflib.get_close_matches(kind, KINDS, n=1)
        tip = f'; did you mean "{hint[0]}"?' if hint else f"; use one of {kinds}"
        raise SpaceError(key, f'unknown distribution "{kind}"{tip}')
    if kind == "bool":
        if args is not True:
            raise SpaceError(key, "bool takes true ({bool = true} searches false and true)")
        return Dist("bool", ())
    if not isinstance(args, list):
        raise SpaceError(key, f"{kind} takes an array (got {_fmt(args)})")
    if kind == "choice":
        if not args:
            raise SpaceError(key, "choice needs at least one option (got an empty array)")
        return Dist("choice", tuple(args))
    wanted = "[low, high] or [low, high, q]" if kind == "quniform" else "[low, high]"
    if len(args) not in ((2, 3) if kind == "quniform" else (2,)) or not all(map(_number, args)):
        raise SpaceError(key, f"{kind} takes {wanted} numbers (got {args})")
    low, high = args[0], args[1]
    if not all(math.isfinite(a) for a in args):
        raise SpaceError(key, f"{kind} takes finite numbers (got {args})")
    if low > high:
        raise SpaceError(key, f"{kind} low {low} is above high {high}")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(key, f"loguniform needs low > 0 (got {low})")
    if kind == "quniform":
        q = args[2] if len(args) == 3 else 1
        if q <= 0:
            raise SpaceError(key, f"quniform step q must be > 0 (got {q})")
        if (high - low) / q > QUNIFORM_MAX_STEPS:
            raise SpaceError(
                key,
                f"quniform [{low}, {high}, {q}] has {(high - low) / q:,.0f} steps; at most "
                f"{QUNIFORM_MAX_STEPS:,} (narrow the range or raise q)",
            )
        return Dist("quniform", (low, high, q))
    return Dist(kind, (float(low), float(high)))


def _adapter(
    sections: dict[str, Any], section: str, key: str, item: bool = False
) -> TypeAdapter[Any]:
    field = sections[section].model_fields[key]
    annotation = field.annotation
    if item:
        annotation = get_args(annotation)[0]
        return TypeAdapter(annotation, config=ConfigDict(strict=True))
    return TypeAdapter(Annotated[annotation, field], config=ConfigDict(strict=True))  # type: ignore[arg-type]


def _check_values(key: str, dist: Dist, adapter: TypeAdapter[Any], what: str) -> None:
    """Every value the distribution can give must be valid for the config key."""
    probes = dist.values()
    if probes is None:  # continuous: check both ends (floats)
        probes = [float(dist.args[0]), float(dist.args[1])]
        if dist.kind == "quniform":
            probes = [dist.args[0], dist.args[1]]
    for value in probes:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            message = err["msg"][:1].lower() + err["msg"][1:]
            if err["type"] in ("int_type", "int_from_float") and dist.kind in (
                "uniform",
                "loguniform",
                "quniform",
            ):
                message = f"{what} takes integers; use quniform with integer bounds"
                raise SpaceError(key, message) from None
            message = message.replace("'", '"')
            raise SpaceError(key, f"{dist.kind} value {_fmt(value)}: {message}") from None


def parse_space(space: dict[str, Any], sections: dict[str, Any]) -> Space:
    """Parse and check a whole space against the config's ``sections`` (``SECTIONS`` of
    :mod:`heartcli.config.schema`); the first problem is raised as a SpaceError."""
    params, problems = _parse(space, sections)
    if problems:
        raise problems[0]
    return Space(tuple(params))


def check_space(space: dict[str, Any], sections: dict[str, Any]) -> list[SpaceError]:
    """All the problems of a space against the config's ``sections`` (empty when valid)."""
    return _parse(space, sections)[1]


def _parse(space: dict[str, Any], sections: dict[str, Any]) -> tuple[list[Param], list[SpaceError]]:
    params: list[Param] = []
    problems: list[SpaceError] = []
    for key, spec in space.items():
        try:
            params.append(_parse_param(key, spec, sections))
        except SpaceError as exc:
            problems.append(exc)
        except SpaceProblems as exc:
            problems.extend(exc.problems)
    for p in params:
        for option, subs in p.when or ():
            problems += [
                SpaceError(
                    p.key,
                    f"{WHEN}.{option_text(option)}: {s.key} is also searched at the top level; "
                    "search it in one place",
                )
                for s in subs
                if s.key in space
            ]
    if problems:
        return params, problems
    by_key = {p.key: p for p in params}
    layers = by_key.get(LAYERS_KEY)
    if layers is not None:
        counts = layer_counts(layers)
        missing = [k for k in PER_LAYER_KEYS if by_key.get(k) is None]
        if missing:
            problems.append(
                SpaceError(
                    LAYERS_KEY,
                    f"a searched layer count needs {', '.join(missing)} in the space too, "
                    "e.g. {per_layer = {choice = [...]}}",
                )
            )
        for p in params:
            if p.key in PER_LAYER_KEYS and p.per_layer is None and p.dist is not None:
                problems.append(
                    SpaceError(p.key, "with a searched model.conv_layers use {per_layer = ...}")
                )
            if p.per_layer is not None and len(p.per_layer) < max(counts):
                problems.append(
                    SpaceError(
                        p.key,
                        f"per_layer has {len(p.per_layer)} entries but model.conv_layers "
                        f"goes up to {max(counts)}; give one per possible layer",
                    )
                )
    return params, problems


def _parse_param(key: str, spec: Any, sections: dict[str, Any]) -> Param:
    import difflib

    section, _, name = key.partition(".")
    if section not in sections or not name:
        raise SpaceError(key, 'not a config key; use section.key, e.g. "train.lr"')
    if section == "search":
        raise SpaceError(key, "the search settings themselves cannot be searched")
    fields = sections[section].model_fields
    if name not in fields:
        hint = difflib.get_close_matches(name, list(fields), n=1)
        tip = f'; did you mean "{section}.{hint[0]}"?' if hint else ""
        raise SpaceError(key, f"unknown config key{tip}")
    if isinstance(spec, dict) and WHEN in spec:
        return _parse_when(key, spec, sections)
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("per_layer", "each"):
        ((form, items),) = spec.items()
        origin = getattr(fields[name].annotation, "__origin__", None)
        if origin is not list:
            raise SpaceError(key, f"{form} is for list keys; {key} is not a list")
        if form == "per_layer" and key not in PER_LAYER_KEYS:
            raise SpaceError(
                key, f"per_layer is for {', '.join(PER_LAYER_KEYS)}; use each for other lists"
            )
        adapter = _adapter(sections, section, name, item=True)
        if isinstance(items, dict) and form == "per_layer":
            dist = parse_dist(key, items)
            _check_values(key, dist, adapter, key)
            return Param(key, per_layer=(dist,) * 12)
        if not isinstance(items, list) or not items:
            raise SpaceError(key, f"{form} takes a non-empty array of distributions")
        dists = []
        for i, item in enumerate(items):
            dist = parse_dist(f"{key}[{i}]", item)
            _check_values(f"{key}[{i}]", dist, adapter, key)
            dists.append(dist)
        if form == "each":
            return Param(key, each=tuple(dists))
        return Param(key, per_layer=tuple(dists))
    dist = parse_dist(key, spec)
    _check_values(key, dist, _adapter(sections, section, name), key)
    if key == LAYERS_KEY and dist.values() is None:
        raise SpaceError(key, "the layer count is a choice or an integer quniform")
    return Param(key, dist=dist)


def option_text(value: Any) -> str:
    """How a choice's option is named under ``when``: true/false, or the value as text."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse_when(key: str, spec: dict[str, Any], sections: dict[str, Any]) -> Param:
    """A choice (or bool) with the keys that exist only under each of its options."""
    rest = {k: v for k, v in spec.items() if k != WHEN}
    if key == LAYERS_KEY or key in PER_LAYER_KEYS:
        raise SpaceError(key, f"{WHEN} is not for the layer keys (per_layer already is)")
    dist = parse_dist(key, rest)
    if dist.kind not in ("choice", "bool"):
        raise SpaceError(key, f"{WHEN} goes with a choice or a bool, not {dist.kind}")
    section, _, name = key.partition(".")
    _check_values(key, dist, _adapter(sections, section, name), key)
    options = dist.values() or []
    if not all(isinstance(o, str | int | float) for o in options):
        raise SpaceError(key, f"{WHEN} needs a choice of plain values (numbers, strings, bools)")
    texts = [option_text(o) for o in options]
    table = spec[WHEN]
    if not isinstance(table, dict) or not table:
        raise SpaceError(
            key,
            f"{WHEN} takes a table: option -> {{key = distribution}}, e.g. {WHEN} = "
            f'{{{texts[0]} = {{"train.lr" = {{loguniform = [1e-4, 1e-2]}}}}}}',
        )
    problems: list[SpaceError] = []
    for name in table:
        if str(name) not in texts:
            problems.append(
                SpaceError(
                    key,
                    f'{WHEN}.{name}: {key} has no choice "{name}" (its choices: '
                    f"{', '.join(texts)})",
                )
            )
    branches = []
    for option, text in zip(options, texts, strict=True):
        subs = table.get(text) or {}
        branches.append((option, tuple(_parse_branch(key, text, subs, sections, problems))))
    if problems:
        raise SpaceProblems(problems)
    return Param(key, dist=dist, when=tuple(branches))


def _parse_branch(
    key: str, text: str, subs: Any, sections: dict[str, Any], problems: list[SpaceError]
) -> list[Param]:
    """The keys under one option of ``key``; their problems go to ``problems``."""
    where = f"{WHEN}.{text}"
    if not isinstance(subs, dict):
        problems.append(SpaceError(key, f"{where}: a table of key = distribution"))
        return []
    params = []
    for sub, sub_spec in subs.items():
        nested = isinstance(sub_spec, dict) and (WHEN in sub_spec or "per_layer" in sub_spec)
        if sub in (key, LAYERS_KEY, *PER_LAYER_KEYS) or nested:
            problems.append(
                SpaceError(
                    key,
                    f"{where}: {sub} cannot be under a {WHEN} ({WHEN} does not nest, and the "
                    "layer keys stay at the top level)",
                )
            )
            continue
        try:
            params.append(_parse_param(sub, sub_spec, sections))
        except SpaceError as exc:
            problems.append(SpaceError(key, f"{where}: {exc.key}: {exc.message}"))
    return params


def layer_counts(param: Param) -> list[int]:
    assert param.dist is not None
    return [int(v) for v in param.dist.values() or []]
