"""What ``heart export --force`` may replace: a folder heart exported, and nothing else.

A heart export holds its model card (``model_card.json``, format ``heart-model-card/1``),
``SHA256SUMS`` and only the regular files that ``SHA256SUMS`` lists. Anything else in
the way (a run folder, a dataset, a user's folder, a file, a link) is refused with one
line, even with ``--force``: heart deletes only what it made.
"""

from __future__ import annotations

from pathlib import Path

from heartcli.errors import DataError, UsageError
from heartcli.io import read_bounded, read_json

CARD_JSON = "model_card.json"  # the names of an export's files that are not models
CARD_MD = "MODEL_CARD.md"
SUMS = "SHA256SUMS"
CARD_FORMAT = "heart-model-card/1"
MAX_SUMS_BYTES = 1 << 20


def _listed(folder: Path) -> set[str] | None:
    """The names SHA256SUMS lists, or None when it is not a heart export's."""
    try:
        text = read_bounded(folder / SUMS, MAX_SUMS_BYTES, SUMS).decode("utf-8")
        card = read_json(folder / CARD_JSON, "")
    except (DataError, UnicodeDecodeError):
        return None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        return None
    names = set()
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or "/" in name or name in ("", ".", ".."):
            return None
        names.add(name)
    return names


def is_heart_export(folder: Path) -> bool:
    """Whether ``folder`` holds a heart export and nothing else (see the module doc)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    listed = _listed(folder)
    if listed is None or CARD_JSON not in listed:
        return False
    for entry in folder.iterdir():
        if entry.name == SUMS:
            continue
        if entry.name not in listed or entry.is_symlink() or not entry.is_file():
            return False
    return True


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that is in the way: without ``force`` anything but an empty
    folder; with ``force`` anything but a heart export (see :func:`is_heart_export`)."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not force:
        raise UsageError(f"{out} already exists; pass --force to replace it or choose --out")
    if not is_heart_export(out):
        raise UsageError(
            f"--out {out}: holds something other than a heart export (a run, a dataset, other "
            "files); --force replaces only a folder heart exported; choose another --out"
        )
