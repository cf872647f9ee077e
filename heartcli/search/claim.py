"""Claiming a search's folder: its name, the atomic creation, and the lock held while one
process runs it (a second `heart tune` on the same folder is refused, a killed one leaves
it free)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TYPE_CHECKING

from heartcli.errors import HeartError, UsageError
from heartcli.search.best import BEST
from heartcli.search.state import STATE, write_new_state

if TYPE_CHECKING:  # spec.py builds on this module
    from heartcli.search.spec import Search

LOCK = ".lock"


class SearchLock:
    """An exclusive lock on a search folder, held while one process runs it.

    ``fcntl.flock`` on ``.lock``: released by the kernel when the process dies, so a
    kill -9 never leaves a folder locked. Where flock does not exist (Windows), only the
    atomic creation of the folder protects it.
    """

    def __init__(self, search_dir: Path):
        self.search_dir = search_dir
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        path = self.search_dir / LOCK
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            import fcntl
        except ImportError:  # pragma: no cover (not POSIX)
            self._fh = fh
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise UsageError(
                f"{self.search_dir} is in use by another `heart tune`; wait for it to finish "
                "or choose another --name"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None


def check_search_name(name: str) -> None:
    """``--name`` of a search: a run name (:func:`heartcli.model.runs.check_name`), and not
    the ``best`` link the search folder's parent keeps."""
    from heartcli.model.runs import check_name

    check_name(name)
    if name == BEST:
        raise UsageError(
            f"--name {name!r}: a search name is one folder name of letters, digits, '.', '_' "
            f"and '-' (at most 100, and not {BEST!r})"
        )


def new_search(search: Search) -> SearchLock:
    """Claim the planned search's folder (an atomic mkdir, then its lock) with its config and
    an empty state; nothing runs yet. Two starts with one name: the second is refused."""
    search_dir = search.folder
    try:
        search_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only or full file system
        raise HeartError(
            f"cannot create {search_dir.parent}: {exc.strerror}; choose a writable folder as "
            "[train] runs_dir"
        ) from None
    try:
        search_dir.mkdir()
    except FileExistsError:
        if (search_dir / STATE).exists():
            probe = SearchLock(search_dir)
            probe.acquire()  # refused (in use) when another process runs it
            probe.release()
            raise UsageError(
                f"{search_dir} already exists; choose another --name or continue it with "
                f"`heart tune --resume {search_dir}`"
            ) from None
        raise UsageError(
            f"{search_dir} is in use by another `heart tune` (or was left half-created; "
            "remove it); choose another --name"
        ) from None
    except OSError as exc:
        raise HeartError(
            f"cannot create {search_dir}: {exc.strerror}; choose a writable folder as "
            "[train] runs_dir"
        ) from None
    lock = SearchLock(search_dir)
    lock.acquire()
    write_new_state(search)
    return lock
