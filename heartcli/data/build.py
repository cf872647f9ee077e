"""Build the beat dataset from local MIT-BIH records: all beats, both splits, a manifest."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from heartcli import __version__
from heartcli.data.beats import (
    BEAT_LENGTH,
    RATE_HZ,
    STRIDE,
    TAIL_DIVISOR,
    record_beats,
    record_rows,
)
from heartcli.data.dataset import (
    AAMI_CLASSES,
    MANIFEST,
    PARTS,
    RHYTHM_COLUMNS,
    BeatSet,
    part_name,
    split_path,
    write_beats,
)
from heartcli.data.mitdb import DS1, DS2, RECORDS, record_files
from heartcli.data.records import NoLead
from heartcli.data.rhythm import DEFINITIONS, MIN_BEATS
from heartcli.errors import DataError, HeartError
from heartcli.io import sha256_file, staged_dir, unwritable, write_json

SPLITS = ("random", "inter-patient")


def collect_beats(
    records_dir: str | Path,
    records: Sequence[str] = RECORDS,
    *,
    lead: str = "channel0",
    on_record: Callable[[str], None] | None = None,
    rhythm: bool = True,
) -> tuple[BeatSet, list[str], list[str]]:
    """Every beat of ``records`` (in record order), with its rhythm features.

    Returns the beats, the records skipped and the records with fewer than 3 beats (their
    rhythm columns hold the defined stand-ins of :mod:`heartcli.data.rhythm`). With
    ``lead="MLII"`` a record without an MLII lead (102, 104) is skipped, not an error.
    ``rhythm=False`` leaves the rhythm columns out.
    """
    records_dir = Path(records_dir)

    def one(record: str) -> tuple[str, tuple[Any, ...] | None]:
        try:
            if rhythm:
                result: tuple[Any, ...] = record_rows(records_dir / record, lead)
            else:
                result = (*record_beats(records_dir / record, lead), None, False)
        except NoLead:
            return record, None
        if on_record is not None:
            on_record(record)
        return record, result

    # wfdb's decoding is numpy work that releases the GIL: two threads halve the wall time.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, records))
    xs, ys, recs, peaks, rhythms, skipped, short = [], [], [], [], [], [], []
    for record, result in results:
        if result is None:
            skipped.append(record)
            continue
        x, y, peak, features, too_short = result
        xs.append(x)
        ys.append(y)
        peaks.append(peak)
        rhythms.append(features)
        recs.append(np.full(len(y), record, dtype=object))
        if too_short:
            short.append(record)
    if not xs:
        raise DataError(f"{records_dir}: no beats found in the records")
    beats = BeatSet(
        np.concatenate(xs),
        np.concatenate(ys),
        np.concatenate(recs),
        np.concatenate(peaks),
        list(AAMI_CLASSES),
        np.concatenate(rhythms) if rhythm else None,
    )
    return beats, skipped, short


def rhythm_manifest(short: list[str]) -> dict[str, Any]:
    """The manifest's description of the rhythm columns (see :mod:`heartcli.data.rhythm`)."""
    note = (
        f"records with fewer than {MIN_BEATS} beats: {', '.join(short)}; their intervals "
        "are 0 and their ratios 1"
        if short
        else f"every record has at least {MIN_BEATS} beats"
    )
    return {
        "columns": list(RHYTHM_COLUMNS),
        "dtype": "float32",
        "unit": "seconds (rr_pre, rr_post, rr_local, rr_record); ratios without unit",
        "beats": "RR intervals between the record's beat annotations (AAMI beat symbols "
        "N L R e j A a J S V E F / f Q); non-beat annotations are skipped",
        "definitions": DEFINITIONS,
        "records_too_short": short,
        "note": note,
    }


def random_split(beats: BeatSet, test_fraction: float, seed: int) -> tuple[BeatSet, BeatSet]:
    """Stratified beat-level split (the Kaggle protocol): patients appear on both sides."""
    from sklearn.model_selection import train_test_split  # slow import, needed only here

    index = np.arange(len(beats))
    train, test = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=beats.y
    )
    return beats.subset(np.sort(train)), beats.subset(np.sort(test))


def inter_patient_split(beats: BeatSet) -> tuple[BeatSet, BeatSet]:
    """de Chazal 2004: DS1 records train, DS2 records test, no patient on both sides."""
    train = np.flatnonzero(np.isin(beats.record, DS1))
    test = np.flatnonzero(np.isin(beats.record, DS2))
    return beats.subset(train), beats.subset(test)


STAGING_PREFIX = ".heart-build-"
WRITABLE = "choose a writable folder with --out"
LOCK = ".lock"


DATASET_LOCK = ".heart-build-lock"  # a build's file, like the staging folders
_held: set[Path] = set()


@contextlib.contextmanager
def dataset_lock(out_dir: str | Path) -> Iterator[None]:
    """One writer per dataset folder: an exclusive flock on ``DIR/.heart-build-lock`` for the
    whole fetch (check, build, swap, rollback). A second fetch into the folder fails at
    once with one line instead of touching the first one's files. Re-entrant within a
    process (fetch holds it while write_dataset takes it again). The lock file is removed
    on release (while still locked), so a failed fetch leaves nothing behind; a process
    that locked a removed file sees another inode at the path and opens it again."""
    out_dir = Path(out_dir)
    key = out_dir.resolve()
    if key in _held:
        yield
        return
    path = out_dir / DATASET_LOCK
    fd = _take_lock(out_dir, path)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _take_lock(out_dir: Path, path: Path) -> int:
    for _ in range(5):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise unwritable(out_dir, exc, WRITABLE) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise HeartError(
                f"{out_dir}: another `heart fetch` is writing this dataset; wait for it to "
                "finish, or choose another --out"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was removed by the fetch that held it: lock the new one
    raise HeartError(f"{out_dir}: cannot take the dataset lock {path}; try again")


@contextlib.contextmanager
def _staging_lock(staging: Path, out_dir: Path) -> Iterator[None]:
    """Lock (flock) the staging folder for this build's life: another fetch's
    :func:`clean_stale_staging` leaves a locked folder alone."""
    try:
        fd = os.open(staging / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise unwritable(out_dir, exc, WRITABLE) from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def clean_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders of builds that died (kill -9): a running build holds the
    lock in its folder, so only folders whose lock nobody holds are removed."""
    removed = []
    for folder in sorted(Path(out_dir).glob(f"{STAGING_PREFIX}*")):
        if not folder.is_dir():
            continue
        try:
            fd = os.open(folder / LOCK, os.O_RDWR)
        except FileNotFoundError:
            # Killed between mkdtemp and creating the lock: a live build creates it at once.
            if time.time() - folder.stat().st_mtime < 60:
                continue
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a running build owns it
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _swap_in(out_dir: Path, staging: Path, names: list[str]) -> None:
    """Move the staged splits and manifest into ``out_dir`` as one unit.

    The manifest is the commit point: the old one is taken away first, so between the
    renames ``out_dir`` holds no dataset at all (never old files under a new manifest, or
    new files under the old one); the new one is renamed in last. On failure every move is
    undone in reverse, and the old dataset is back as it was.
    """
    old = staging / "old"
    old.mkdir()
    done: list[tuple[Path, Path]] = []

    def move(src: Path, dst: Path) -> None:
        os.replace(src, dst)
        done.append((src, dst))

    try:
        if (out_dir / MANIFEST).exists():
            move(out_dir / MANIFEST, old / MANIFEST)
        for name in names:
            if (out_dir / name).exists() or (out_dir / name).is_symlink():
                move(out_dir / name, old / name)
            move(staging / name, out_dir / name)
        move(staging / MANIFEST, out_dir / MANIFEST)
    except OSError as exc:
        for src, dst in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(dst, src)
        place = exc.filename or out_dir
        raise HeartError(
            f"cannot replace the dataset in {out_dir}: {exc.strerror} ({place}); the old "
            "dataset is left as it was; make the folder writable or choose another --out"
        ) from None


def write_dataset(
    out_dir: str | Path,
    splits: dict[str, tuple[BeatSet, BeatSet]],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write splits and manifest into ``out_dir`` as one unit, never half-written.

    The whole new tree is written into a staging folder inside ``out_dir`` first, with the
    SHA-256 of every file in the manifest; then it is swapped in (:func:`_swap_in`).
    """
    out_dir = Path(out_dir)
    with dataset_lock(out_dir):
        return _write_locked(out_dir, splits, manifest)


def _write_locked(
    out_dir: Path, splits: dict[str, tuple[BeatSet, BeatSet]], manifest: dict[str, Any]
) -> dict[str, Any]:
    try:
        clean_stale_staging(out_dir)
    except OSError as exc:
        raise unwritable(out_dir, exc, WRITABLE) from None
    # The staging folder lies beside the dataset's files, in the dataset folder itself.
    with (
        staged_dir(out_dir / MANIFEST, prefix=STAGING_PREFIX, remedy=WRITABLE) as staging,
        _staging_lock(staging, out_dir),
    ):
        jobs = [
            (split_path(staging, name, part), beats)
            for name, pair in splits.items()
            for part, beats in zip(PARTS, pair, strict=True)
        ]
        # Parquet encoding releases the GIL: write the four files side by side.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda job: write_beats(*job), jobs))
        counts: dict[str, Any] = {}
        for name, (train, test) in splits.items():
            counts[name] = {
                "train": {"total": len(train), **train.counts()},
                "test": {"total": len(test), **test.counts()},
            }
        files = {
            part_name(name, part): sha256_file(split_path(staging, name, part))
            for name in splits
            for part in PARTS
        }
        manifest = {**manifest, "splits": counts, "files": files}
        write_json(staging / MANIFEST, manifest)
        _swap_in(out_dir, staging, list(splits))
    return manifest


def build_dataset(
    records_dir: str | Path,
    out_dir: str | Path,
    *,
    lead: str = "channel0",
    test_fraction: float = 0.2,
    seed: int = 42,
    on_record: Callable[[str], None] | None = None,
    rhythm: bool = True,
) -> dict[str, Any]:
    """Build both splits from the 48 records in ``records_dir``; returns the manifest.

    ``rhythm=False`` leaves out the rhythm columns (the benchmark's baseline).
    """
    started = time.perf_counter()
    records_dir = Path(records_dir)
    missing = [f for r in RECORDS for f in record_files(r) if not (records_dir / f).exists()]
    if missing:
        raise DataError(
            f"{records_dir}: {len(missing)} record files missing (first: {missing[0]}); "
            "run `heart fetch` to download them"
        )
    beats, skipped, short = collect_beats(
        records_dir, lead=lead, on_record=on_record, rhythm=rhythm
    )
    splits = {
        "random": random_split(beats, test_fraction, seed),
        "inter-patient": inter_patient_split(beats),
    }
    sources = {
        f: sha256_file(records_dir / f)
        for r in RECORDS
        for f in record_files(r)
        if r not in skipped
    }
    manifest: dict[str, Any] = {
        "heart_version": __version__,
        "source": "MIT-BIH Arrhythmia Database 1.0.0 (PhysioNet mitdb)",
        "classes": list(AAMI_CLASSES),
        "input_length": BEAT_LENGTH,
        "sampling_rate_hz": RATE_HZ,
        "parameters": {
            "recipe": "kaggle-exact",
            "lead": lead,
            "stride": STRIDE,
            "tail": f"(r2 - r1) // {TAIL_DIVISOR}",
            "length": BEAT_LENGTH,
            "normalisation": "min-max over the whole segment, float64, then float32",
            "test_fraction": test_fraction,
            "seed": seed,
        },
        "note": (
            "beats are every third sample of the 360 Hz record: 120 Hz, "
            "not the 125 Hz stated by Kachuee et al. 2018"
        ),
        "records": [r for r in RECORDS if r not in skipped],
        "records_skipped": skipped,
        "inter_patient": {"train": list(DS1), "test": list(DS2)},
        "rhythm": rhythm_manifest(short) if rhythm else None,
        "total": {"total": len(beats), **beats.counts()},
        "source_sha256": sources,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    return write_dataset(out_dir, splits, manifest)
