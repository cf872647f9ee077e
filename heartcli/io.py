"""Small file helpers: every file heart writes goes through a temp file and a rename, and
every folder it builds (a dataset, an export, annotation files) through a staging folder
beside its target (:func:`staged_dir`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from heartcli.errors import DataError, HeartError, UsageError
from heartcli.redact import redact, redact_data

MAX_JSON_BYTES = 64 << 20  # a manifest, eval.json or search.json is KB to a few MB


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_output_file(target: str | Path) -> None:
    """Refuse to replace what is not a regular file (a device, a FIFO, a folder): heart writes
    a temp file and renames it, which would put a file where ``/dev/null`` or a pipe was.
    There is no write-through: ``--out /dev/stdout`` is refused too (use ``--json``)."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HeartError(f"cannot write {target}: {exc.strerror}; choose another path") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{target}: {_kind(mode)}, not a regular file; heart writes only regular files, "
            "choose another path"
        )


# --------------------------------------------------------------------------- the output guard

# The folders heart keeps, known by the JSON file that makes them what they are (the names
# are those of model/runs.py, search/state.py, export/guard.py, data/dataset.py; a test
# checks that they agree). A file heart did not write in such a folder would break it: a
# run's history.csv replaced, an export that `--force` no longer recognises.
HEART_FOLDERS = {
    "manifest.json": ("run", "format", "heart-run/"),
    "search.json": ("search", "format", "heart-search/"),
    "model_card.json": ("export", "format", "heart-model-card/"),
}
DATASET_KEYS = ("heart_version", "splits")  # a dataset's manifest.json


def heart_folder(folder: str | Path) -> str | None:
    """What heart keeps in ``folder``: "run", "search", "export", "dataset", or None."""
    folder = Path(folder)
    for marker, (kind, key, prefix) in HEART_FOLDERS.items():
        path = folder / marker
        if not path.is_file():
            continue
        try:
            data = json.loads(read_bounded(path, MAX_JSON_BYTES, "JSON").decode("utf-8"))
        except (DataError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        if str(data.get(key, "")).startswith(prefix):
            return kind
        if marker == "manifest.json" and all(k in data for k in DATASET_KEYS):
            return "dataset"
    return None


def _owner(path: Path) -> tuple[str, Path] | None:
    """The innermost heart folder ``path`` lies in, at any depth (a run's folds/fold-1/...)."""
    for folder in list(path.parents)[:64]:
        kind = heart_folder(folder)
        if kind is not None:
            return kind, folder
    return None


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, another spelling of a mount
    except OSError:
        return False


def check_output(
    target: str | Path,
    *,
    inputs: Sequence[str | Path] = (),
    option: str = "--out",
    folder: bool = False,
    kind: str | None = None,
) -> Path:
    """The one check of a path a command is about to write, made before any work starts.

    Refused (UsageError, exit 2): what is not a regular file (a device, a FIFO, a folder;
    with ``folder`` what is not a folder), any of ``inputs`` (the
    command's input files, a record's .hea/.dat/.atr among them, in any spelling: a link,
    a relative path, a hard link), and a file of a folder heart keeps (a run, a search, an
    export, a dataset: :func:`heart_folder`, at any depth below it).

    ``folder``: ``target`` is a folder the command writes into; refused when it is a file,
    or a folder heart keeps of another kind than ``kind`` (what the command makes there).
    """
    target = Path(target)
    if folder:
        if target.exists() and not target.is_dir():
            raise UsageError(f"{option} {target}: a file, not a folder; name a folder")
        found = heart_folder(target) if target.is_dir() else None
        if found is not None and found != kind:
            raise UsageError(
                f"{option} {target}: a {found} folder heart keeps; choose another folder"
            )
    else:
        check_output_file(target)
    for given in inputs:
        if _same(target, Path(given)):
            raise UsageError(f"{option} {target}: is the input {given}; write the output elsewhere")
    owner = None if folder else _owner(target.absolute())
    if owner is not None:
        kind, where = owner
        raise UsageError(
            f"{option} {target}: a file of the {kind} folder {where} (heart keeps its "
            "files); choose a path outside it"
        )
    return target


def write_failed(target: str | Path, exc: BaseException) -> HeartError:
    """The one line for a write that failed (full disk, read-only, permissions...)."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return HeartError(
        f"cannot write {target}: {why[:200]}; free some space or choose a writable folder"
    )


def unwritable(folder: str | Path, exc: OSError, remedy: str | None = None) -> HeartError:
    """The one line for a folder heart cannot write into: ``cannot write to FOLDER: REASON``,
    then ``; remedy`` when given."""
    tail = f"; {remedy}" if remedy else ""
    return HeartError(f"cannot write to {folder}: {exc.strerror}{tail}")


def _mkdir_mode() -> int:
    """The permissions ``mkdir`` gives a new folder under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def staged_dir(
    target: str | Path, *, prefix: str | None = None, remedy: str | None = None
) -> Iterator[Path]:
    """A fresh hidden folder beside ``target`` (in its parent, made if missing) to build in.

    The block writes everything there, then moves what it built into place: the whole
    folder onto ``target`` (:func:`place_dir`), or its files one by one (the dataset's
    swap, a WFDB annotation file). When the block ends, however it ends, the folder and
    whatever is left in it are removed, so a failed build leaves nothing behind (a process
    killed with SIGKILL leaves the folder; its name starts with ``prefix``, by default
    ``.TARGET.tmp-``). A folder that cannot be made is one :func:`unwritable` line naming
    the parent, ending in ``remedy``.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise unwritable(parent, exc, remedy) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def place_dir(staged: str | Path, target: str | Path) -> None:
    """Rename the folder ``staged`` (from :func:`staged_dir`) onto ``target`` whole.

    The caller has decided ``target`` may go: an empty folder there is removed; anything
    else is first moved into a hidden folder beside it and deleted after the rename. The
    placed folder gets the permissions ``mkdir`` would give it (a staging folder is 0700).
    """
    staged, target = Path(staged), Path(target)
    old: Path | None = None
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
    staged.chmod(_mkdir_mode())
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _is_write_error(exc: BaseException) -> bool:
    """An OSError, or what torch.save / safetensors raise when the disk is full."""
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ in ("RuntimeError", "SafetensorError") and (
        "writ" in text or "space" in text or "i/o" in text
    )


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit``: a device, FIFO or folder is
    refused (opened without blocking, so a FIFO never hangs), as is a bigger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: {_kind(mode)}, not a {what} file; pass a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{path}: over {limit:,} bytes, too big for a {what}; pass the right file")
    return data


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    check_output_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise HeartError(
            f"cannot write to {target.parent}: {exc.strerror}; choose a writable folder"
        ) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        # Writers that replace the temp file (safetensors does) leave it 0600: every file
        # heart writes gets the same permissions, whatever wrote it.
        os.chmod(tmp_path, mode)
        check_output_file(target)  # a FIFO or device may have been put there meanwhile
        os.replace(tmp_path, target)
    except HeartError:
        raise
    except Exception as exc:
        if not _is_write_error(exc):
            raise
        raise write_failed(target, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` atomically, credentials in any URI in it redacted (see redact.py)."""
    with atomic_path(target) as tmp:
        tmp.write_text(redact(text), encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    text = json.dumps(redact_data(data), indent=2, sort_keys=False, default=str) + "\n"
    write_text(target, text)


def read_json(path: str | Path, remedy: str) -> Any:
    """Parse a JSON file heart wrote; a damaged one is a one-line DataError ending in ``remedy``.
    Only a regular file of at most MAX_JSON_BYTES is read (never a FIFO or a device)."""
    try:
        data = read_bounded(path, MAX_JSON_BYTES, "JSON")
    except DataError as exc:
        raise DataError(f"{exc}; {remedy}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DataError(f"{path}: truncated or unreadable; {remedy}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
