"""A parsed `[search.space]` as hyperopt expressions, and a sample of them as config values.

:func:`to_hyperopt` builds the expression TPE (and Ray's HyperOptSearch) draws from: one
``hp`` node per distribution, labelled by its key (:func:`label`); the layer count is an
``hp.choice`` whose branches hold their own per-layer nodes, and a choice with ``when``
keys one branch per option. :func:`flatten` turns a sample back into ``config key ->
value`` (integers where meant, only the keys of the options drawn), and :func:`apply` sets
those values in a config dict. The grammar itself is :mod:`heartcli.config.space`.
"""

from __future__ import annotations

import math
from typing import Any

from heartcli.config.space import LAYERS_KEY, Dist, Param, Space, layer_counts, option_text

CHOSEN = "__chosen__"  # a when-branch's own value, in a hyperopt sample


def dist_hp(dist: Dist, label: str) -> Any:
    """One distribution as a hyperopt node labelled ``label``."""
    from hyperopt import hp

    if dist.kind == "choice":
        return hp.choice(label, list(dist.args))
    if dist.kind == "bool":
        return hp.choice(label, [False, True])
    low, high = dist.args[0], dist.args[1]
    if dist.kind == "uniform":
        return hp.uniform(label, low, high)
    if dist.kind == "loguniform":
        return hp.loguniform(label, math.log(low), math.log(high))
    q = dist.args[2]
    # hp.quniform rounds to the grid; widen by half a step so the ends are as likely.
    return hp.quniform(label, low - q / 2, high + q / 2, q)


def label(key: str, layers: int | None = None) -> str:
    """The hyperopt label of a parameter: its key, plus the branch for per-layer keys."""
    return key if layers is None else f"{key}|{layers}"


def to_hyperopt(space: Space, fixed_layers: int) -> dict[str, Any]:
    """The hyperopt expression; a sample of it is a dict ``key -> value`` (see flatten)."""
    plain: dict[str, Any] = {}
    layered = [p for p in space.params if p.per_layer is not None]
    for p in space.params:
        if p.key == LAYERS_KEY or p.per_layer is not None:
            continue
        if p.when is not None:
            plain[p.key] = _when_hp(p)
        else:
            plain[p.key] = _param_hp(p)
    expr: dict[str, Any] = {"plain": plain}
    layers = space.param(LAYERS_KEY)
    if layers is not None:
        from hyperopt import hp

        branches = []
        for n in layer_counts(layers):
            branch: dict[str, Any] = {LAYERS_KEY: n}
            for p in layered:
                assert p.per_layer is not None
                branch[p.key] = [
                    dist_hp(p.per_layer[i], label(f"{p.key}[{i}]", n)) for i in range(n)
                ]
            branches.append(branch)
        expr["layers"] = hp.choice(LAYERS_KEY, branches)
    elif layered:
        expr["layers"] = {
            p.key: [dist_hp(p.per_layer[i], label(f"{p.key}[{i}]")) for i in range(fixed_layers)]
            for p in layered
            if p.per_layer is not None
        }
    return expr


def _param_hp(p: Param, branch: str = "") -> Any:
    """A plain or ``each`` parameter's hyperopt expression; ``branch`` tells the labels of
    one ``when`` option apart (``key|parent=option``)."""
    if p.each is not None:
        return [dist_hp(d, label(f"{p.key}[{i}]") + branch) for i, d in enumerate(p.each)]
    assert p.dist is not None
    return dist_hp(p.dist, label(p.key) + branch)


def _when_hp(p: Param) -> Any:
    """A choice whose options carry their own keys: one hyperopt branch per option, with
    the option's index as the choice's value (the same labels and values as a plain
    choice), so TPE models each option's keys on their own."""
    from hyperopt import hp

    assert p.when is not None
    branches = []
    for option, subs in p.when:
        suffix = f"|{p.key}={option_text(option)}"
        branch: dict[str, Any] = {CHOSEN: option}
        branch.update({s.key: _param_hp(s, suffix) for s in subs})
        branches.append(branch)
    return hp.choice(label(p.key), branches)


def _expand(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample's ``when`` branches ({CHOSEN: option, key: value}) as plain keys."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if isinstance(value, dict) and CHOSEN in value:
            out[key] = value[CHOSEN]
            out.update({k: v for k, v in value.items() if k != CHOSEN})
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    """numpy scalars and tuples from hyperopt -> plain Python."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, list | dict):
        return value.item()
    return value


def _cast(dist: Dist, value: Any) -> Any:
    if dist.kind != "quniform":
        return value
    low, high, _ = dist.args
    value = min(max(float(value), low), high)
    return round(value) if all(isinstance(a, int) for a in dist.args) else value


def flatten(space: Space, sample: dict[str, Any]) -> dict[str, Any]:
    """A sample of :func:`to_hyperopt` -> ``config key -> value``, integers where meant."""
    values: dict[str, Any] = {}
    for key, value in _expand({**sample.get("plain", {}), **sample.get("layers", {})}).items():
        values[key] = _plain(value)
    active: list[Param] = []
    for p in space.params:
        active.append(p)
        chosen = values.get(p.key)
        active += [s for option, subs in p.when or () if option == chosen for s in subs]
    for p in active:
        if p.key not in values:
            continue
        if p.dist is not None:
            values[p.key] = _cast(p.dist, values[p.key])
        else:
            dists = p.each or p.per_layer or ()
            values[p.key] = [_cast(d, v) for v, d in zip(values[p.key], dists, strict=False)]
    return values


def apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A config dict (``HeartConfig.to_dict()``) with the sampled ``values`` set."""
    data = {section: dict(body) for section, body in base.items()}
    for key, value in values.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    return data
