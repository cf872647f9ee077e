"""The run folder written by `heart train` and read by evaluate, export and predict.

``runs/NAME/``: ``config.toml`` (resolved, commented, runnable), ``model.safetensors`` (best
weights), ``checkpoint.pt`` (last epoch: weights, optimizer, scheduler, epoch, best so far;
loads with ``torch.load(weights_only=True)``), ``manifest.json``, ``history.csv``,
``curves.png``; after `heart evaluate`: ``eval.json``, ``confusion.png``.

The layout, names, claims, manifests and checkpoints only: loading a run's model is
:mod:`heartcli.model.load`. torch is imported inside the functions that need it, so the
file names here cost an ONNX-only `heart predict` nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from heartcli.config import HeartConfig, load_config
from heartcli.errors import ConfigError, DataError, HeartError, UsageError
from heartcli.io import (
    atomic_path,
    heart_folder,
    read_json,
    sha256_file,
    write_json,
    write_text,
)

if TYPE_CHECKING:
    from torch import nn

CONFIG = "config.toml"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
MANIFEST = "manifest.json"
HISTORY = "history.csv"
CURVES = "curves.png"
VAL_CONFUSION = "val_confusion.png"  # the best epoch's validation confusion
EVAL = "eval.json"
CONFUSION = "confusion.png"
MANIFEST_KEYS = ("format", "classes", "input_length", "status")
FORMAT = "heart-run/1"


NAME_MAX = 100
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, option: str = "--name") -> str:
    """A run or search name is one safe folder name: letters, digits and ``._-``, at most 100."""
    if not name or not _NAME.fullmatch(name) or name in (".", "..") or name.startswith("-"):
        raise UsageError(
            f"{option} {name!r}: a name is one folder name of letters, digits, '.', '_' and "
            "'-' (not starting with '-', not '.' or '..'); e.g. --name seed-1"
        )
    if len(name) > NAME_MAX:
        raise UsageError(
            f"{option}: a name of {len(name)} characters is too long (at most {NAME_MAX})"
        )
    return name


LOCK = ".lock"  # held (flock) by the process training into the folder; gone when it ends
FINISHED = ("completed", "early_stopped", "budget")  # a run that needs no --resume
_held: dict[Path, IO[str]] = {}


def _left_by_a_start(entries: set[str]) -> bool:
    """Whether ``entries`` are what a `heart train` killed before its manifest can leave in
    its folder: the lock, config.toml, TensorBoard's folder, an atomic write's temp file."""
    return LOCK in entries and all(
        n in (LOCK, CONFIG, "tensorboard") or (n.startswith(".") and n.endswith(".tmp"))
        for n in entries
    )


def new_run_dir(config: HeartConfig, name: str | None = None) -> Path:
    """The path of a fresh run folder under ``[train] runs_dir``: NAME, or a timestamp.

    Only a check: :func:`claim_run_dir` is what takes the folder, atomically.
    """
    name = check_name(name) if name is not None else datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(config.train.runs_dir) / name
    _check_free(path)
    return path


def _in_use(path: Path) -> UsageError:
    return UsageError(
        f"{path} already exists (the name is in use); choose another --name or continue "
        f"it with `heart train --resume {path}`"
    )


def _check_free(path: Path) -> None:
    """Refuse a name whose folder holds a run (continue it with --resume), is being made by
    another `heart train`, or holds something heart did not make. A folder a killed `heart
    train` left before its run started (no manifest, its lock free) is free again."""
    if not (path.exists() or path.is_symlink()):
        return
    if (path / MANIFEST).exists():
        raise _in_use(path)
    if path.is_symlink() or not path.is_dir():
        raise UsageError(f"{path}: not a folder; choose another --name")
    kind = heart_folder(path)
    entries = {p.name for p in path.iterdir()}
    if kind is not None or (entries and not _left_by_a_start(entries)):
        what = f"a heart {kind}" if kind else "files that are not a heart run"
        raise UsageError(f"{path} exists and holds {what}; choose another --name")


def _lock(path: Path, what: str) -> None:
    """Hold ``path/.lock`` (flock) until :func:`unlock_run_dir`; released by the kernel
    when the process dies, so a kill -9 never leaves a name taken."""
    try:
        fh = open(path / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held until unlock)
    except OSError as exc:
        raise HeartError(f"cannot write to {path}: {exc.strerror}") from None
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover (not POSIX: the atomic mkdir alone)
        pass
    except OSError:
        fh.close()
        raise UsageError(
            f"{path}: the name is in use by another `heart train` ({what}); wait for it to "
            "finish or choose another --name"
        ) from None
    _held[path] = fh


def claim_run_dir(path: Path) -> Path:
    """Create ``path`` as a new folder and hold its lock, or fail: of two runs racing for one
    name, exactly one gets it; the other gets a UsageError (exit 2). A folder left by a
    `heart train` killed before its run started (no manifest, no live lock) is taken over."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        _check_free(path)
    except OSError as exc:
        raise HeartError(
            f"cannot create {path}: {exc.strerror}; choose a writable [train] runs_dir"
        ) from None
    _lock(path, "starting a run")
    if (path / MANIFEST).exists():  # another one got there first and started
        unlock_run_dir(path)
        raise _in_use(path)
    for entry in path.iterdir():  # what a killed start left (no manifest: nothing finished)
        if entry.name != LOCK:
            _remove(entry)
    return path


def lock_run_dir(path: Path) -> None:
    """Hold the lock of an existing run folder for ``--resume`` (refused while it trains)."""
    _lock(Path(path), "training it now")


def unlock_run_dir(path: Path) -> None:
    """Let go of the folder's lock (and its file, when the folder is still there)."""
    fh = _held.pop(Path(path), None)
    if fh is None:
        return
    with contextlib.suppress(OSError):
        (Path(path) / LOCK).unlink()
    fh.close()


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def release_run_dir(path: Path) -> None:
    """Undo :func:`claim_run_dir` for a run that failed before writing anything lasting
    (no manifest): the folder goes, and the name is free again."""
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).exists():
        unlock_run_dir(path)
        shutil.rmtree(path, ignore_errors=True)


def save_run_config(config: HeartConfig, run_dir: Path, base: Any = None) -> str:
    """Write the run's config.toml unless it already says exactly this; return its SHA-256.

    A resume without --set leaves the file untouched; with --set it is written back, and
    the manifest records the new checksum.
    """
    from heartcli.config import dumps
    from heartcli.redact import redact

    file = Path(run_dir) / CONFIG
    text = redact(dumps(config, base))  # credentials are never stored (see redact.py)
    current = file.read_text(encoding="utf-8") if file.is_file() else None
    if current != text:
        write_text(file, text)
    return sha256_file(file)


def input_range(x: Any) -> list[float]:
    """The [min, max] of the beats a model trained on (predict warns far outside it)."""
    return [float(x.min()), float(x.max())] if len(x) else [0.0, 1.0]


def check_run_config(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse a run whose config.toml is not the one its manifest recorded (cut, edited)."""
    file = Path(run_dir) / CONFIG
    recorded = manifest.get("config_sha256")
    if recorded is None or not file.is_file():
        return
    if sha256_file(file) != recorded:
        raise DataError(
            f"{file}: does not match the checksum in {MANIFEST} (truncated or edited); "
            "restore the run's config.toml as it was (keys change with --set on "
            "`heart train --resume`, never by editing the file)"
        )


def save_weights(model: nn.Module, path: Path) -> None:
    """The weights as safetensors, serialised in memory and written by Python: a full disk
    is an OSError naming the file ("No space left on device"), not a C++ library's words."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": FORMAT})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """checkpoint.pt, serialised in memory and written by Python (see save_weights)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise DataError(f"{run_dir}: no {CHECKPOINT} to resume from; start a new run instead")
    import torch

    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise DataError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}); start a new run"
        ) from None


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(run_dir / MANIFEST, manifest)


def mark_failed(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Record status "failed", even on a full disk: when the manifest cannot be rewritten
    through a temp file, its ``"status": "running"`` is overwritten in place with
    ``"status": "failed"`` and padding of the same length (no new block is needed)."""
    manifest["status"] = "failed"
    try:
        write_manifest(run_dir, manifest)
        return
    except HeartError:
        pass
    path = Path(run_dir) / MANIFEST
    old, new = b'"status": "running"', b'"status": "failed" '
    try:
        with open(path, "r+b") as fh:
            data = fh.read()
            at = data.find(old)
            if at >= 0:
                fh.seek(at)
                fh.write(new)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError:
        pass  # nothing more can be done; the caller's error says what failed


def read_run_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir)
    if not path.exists():
        raise DataError(f"{path}: no such run folder; train one with `heart train`")
    if not path.is_dir():
        raise DataError(f"{path}: not a run folder (a file); pass the folder `heart train` wrote")
    file = path / MANIFEST
    if not file.exists():
        raise DataError(f"{path}: not a heart run folder ({MANIFEST} missing)")
    manifest = read_json(file, "retrain the run")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a heart run folder ({MANIFEST} is not a heart run manifest)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DataError(f"{file}: truncated (no {', '.join(missing)}); retrain the run")
    wrong = _wrong_types(manifest)
    if wrong:
        raise DataError(f"{file}: {wrong} (edited by hand?); restore the file or retrain the run")
    return manifest


def _wrong_types(manifest: dict[str, Any]) -> str | None:
    """What in a run's manifest is not of the type heart wrote (None when all is)."""
    classes, length = manifest["classes"], manifest["input_length"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of class names"
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 100_000:
        return "input_length is not a number of samples"
    if not isinstance(manifest["status"], str):
        return "status is not a word"
    for key in ("data", "crossval", "tracking", "rhythm"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            return f"{key} is not a table"
    span = (manifest.get("data") or {}).get("input_range")
    if span is not None and not (
        isinstance(span, list)
        and len(span) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in span)
    ):
        return "data.input_range is not [min, max]"
    ensemble = manifest.get("ensemble")
    if ensemble is None:
        return None
    members = ensemble.get("members") if isinstance(ensemble, dict) else None
    if not isinstance(members, list) or not members:
        return "ensemble is not a table listing its members"
    for member in members:
        if not isinstance(member, dict) or not all(
            isinstance(member.get(k), str) for k in ("path", "weights_sha256", "config_sha256")
        ):
            return "ensemble.members holds an entry that is not a member (path and checksums)"
    return None


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> HeartConfig:
    file = Path(run_dir) / CONFIG
    if not file.exists():
        raise DataError(f"{run_dir}: {CONFIG} missing; the run folder is incomplete")
    try:
        return load_config(file, overrides or [])
    except ConfigError as exc:
        if any(p.startswith("--set") for p in exc.problems):
            raise
        raise DataError(f"{file}: not a valid config ({exc.problems[0]})") from None


@dataclass
class LoadedRun:
    """A trained run, ready to predict: the model is on the CPU, in eval mode, best weights."""

    path: Path
    config: HeartConfig
    model: nn.Module
    manifest: dict[str, Any]
    classes: list[str]
    input_length: int
