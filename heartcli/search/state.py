"""A search's state on disk: ``search.toml`` and ``search.json``, written and read back.

A search lives in ``runs/NAME/``: ``search.toml`` (the resolved config it runs, comments
kept), ``search.json`` (every trial, written atomically by the one process that runs the
search), ``trial-NNN/`` (a full `heart train` run folder per trial, search/trial_dir.py),
``.lock`` (held for the life of the process running it, search/claim.py), and at the end
``best`` (a link to the best trial's folder), ``best.toml`` (its config, runnable by `heart
train --config`), ``report.png`` / ``report.json`` and ``runs/best`` (a link to the latest
search's best trial; search/best.py). With ``[search] refit``: ``trial-NNN/folds/fold-<i>``
and ``trial-NNN/oof.npz`` for the refitted trials, ``search.json``'s ``refit`` section, and
``final`` (what the search recommends, one model), which ``best`` and ``runs/best`` then
point at (search/refit.py, search/final.py).

``search.json`` records the space the search started with; a resume whose ``[search.space]``
changed since is refused (:func:`check_space_unchanged`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartcli.errors import DataError, UsageError
from heartcli.io import read_json, write_json, write_text
from heartcli.search.records import TrialRecord

if TYPE_CHECKING:  # spec.py builds on this module
    from heartcli.search.spec import Search

STATE = "search.json"
CONFIG = "search.toml"
FORMAT = "heart-search/1"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_state(search_dir: Path) -> dict[str, Any]:
    path = search_dir / STATE
    if not search_dir.is_dir():
        raise UsageError(f"{search_dir}: no such search folder; start one with `heart tune`")
    if not path.exists():
        raise DataError(f"{search_dir}: not a heart search ({STATE} missing)")
    state = read_json(path, "the search cannot be resumed; start a new one")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a heart search state ({FORMAT})")
    return state


def records_of(state: dict[str, Any]) -> list[TrialRecord]:
    known = set(TrialRecord.__dataclass_fields__)
    return [TrialRecord(**{k: v for k, v in t.items() if k in known}) for t in state["trials"]]


def save_state(search_dir: Path, state: dict[str, Any], records: list[TrialRecord]) -> None:
    state["trials"] = [asdict(r) for r in sorted(records, key=lambda r: r.number)]
    state["updated"] = now()
    write_json(search_dir / STATE, state)


def write_new_state(search: Search) -> None:
    """A claimed search folder's ``search.toml`` and its empty ``search.json``."""
    search_dir = search.folder
    write_text(search_dir / CONFIG, search.text)
    write_json(
        search_dir / STATE,
        {
            "format": FORMAT,
            "name": search_dir.name,
            "created": now(),
            "updated": now(),
            "evals": search.s.evals,
            "parent_run_id": None,
            "space": space_record(search.s.space),
            "trials": [],
        },
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def space_record(space: dict[str, Any]) -> dict[str, Any]:
    """The search space as the search started: its SHA-256 and each key's distribution."""
    import hashlib

    return {
        "sha256": hashlib.sha256(_canonical(list(space.items())).encode()).hexdigest(),
        "keys": {key: _canonical(spec) for key, spec in space.items()},
        "order": list(space),
    }


def check_space_unchanged(search: Search, state: dict[str, Any]) -> None:
    """Refuse to resume a search whose [search.space] changed since it started (a key
    added, removed, moved or given another distribution): the trials so far were drawn
    from the old space, and TPE would read them as draws from the new one."""
    recorded = state.get("space")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return  # a search from before the space was recorded
    now_space = space_record(search.s.space)
    if now_space["sha256"] == recorded["sha256"]:
        return
    old_keys = recorded.get("keys") or {}
    new_keys = now_space["keys"]
    changed = sorted(k for k in set(old_keys) | set(new_keys) if old_keys.get(k) != new_keys.get(k))
    if not changed:
        changed = ["the order of the keys"]
    raise UsageError(
        f"{search.folder / CONFIG}: [search.space] changed since the search started "
        f"({', '.join(changed)}); restore it to resume, or start a new search with `heart tune`"
    )
