"""`heart fetch`: get the 48 MIT-BIH records (download or local copy), verify, build the dataset.

Every record file is checked against the SHA-256 PhysioNet publishes (pinned in
``mitdb.sha256``). Downloads resume and are renamed into place only once verified (see
``download.py``). The build is skipped when the dataset folder already holds a manifest
made from exactly these files with the same parameters: a second run is a no-op.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from heartcli import __version__
from heartcli.data.build import SPLITS, build_dataset, clean_stale_staging, dataset_lock
from heartcli.data.dataset import (
    PARTS,
    RHYTHM_COLUMNS,
    changed_files,
    part_name,
    read_manifest,
)
from heartcli.data.download import download, file_url, part_path, short
from heartcli.data.events import CUTTING, DOWNLOADS, FetchResult
from heartcli.data.mitdb import RECORDS, pinned_sha256, record_files
from heartcli.data.rhythm import DEFINITIONS
from heartcli.data.sample import make_sample
from heartcli.errors import DataError
from heartcli.io import check_output, sha256_file, unwritable
from heartcli.progress import Progress

SAMPLE_SEED = 0  # the seed data/sample was drawn with


def all_files() -> list[str]:
    return [name for record in RECORDS for name in record_files(record)]


def ensure_writable(folder: Path, hint: str) -> None:
    """Fail early, before any download or build, when ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise unwritable(folder, exc, hint) from None


def mismatch(path: Path, expected: str, got: str) -> str:
    return f"{path}: SHA-256 mismatch (expected {short(expected)}…, got {short(got)}…)"


def verify_source(source: Path) -> None:
    """Every file of the 48 records is in ``source`` and has its pinned SHA-256."""
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; pass the folder holding the 48 mitdb records")
    pinned = pinned_sha256()
    missing = [name for name in all_files() if not (source / name).is_file()]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} record files missing (first: {missing[0]}); the folder "
            "must hold all 48 records (.hea .atr .dat) of mitdb 1.0.0, or run `heart fetch` "
            "without --source to download them"
        )
    for name in all_files():
        got = sha256_file(source / name)
        if got != pinned[name]:
            raise DataError(
                f"{mismatch(source / name, pinned[name], got)}: the file is truncated or corrupt; "
                "replace it with PhysioNet's copy, or run `heart fetch` without --source"
            )


def download_records(records_dir: Path, url: str, progress: Progress) -> list[str]:
    """Download every missing or corrupt record file; returns the names downloaded."""
    pinned = pinned_sha256()
    todo = []
    for name in all_files():
        path = records_dir / name
        if not path.is_file():
            todo.append(name)
            continue
        got = sha256_file(path)
        if got != pinned[name]:
            progress.note(f"{mismatch(path, pinned[name], got)}: it will be re-downloaded")
            todo.append(name)
    if not todo:
        return []
    progress.stage(f"downloading {len(todo)} files from {url}")
    progress.task(DOWNLOADS, len(todo))
    for name in todo:
        progress.task(name)
        if part_path(records_dir / name).exists():
            progress.note(f"{name}: resuming an interrupted download")
        download(file_url(url, name), records_dir / name, pinned[name], progress=progress)
        progress.done(name)
    progress.done(DOWNLOADS)
    return todo


def current_manifest(
    out_dir: Path, *, lead: str, test_fraction: float, seed: int
) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` if it was built from the pinned records with these settings."""
    try:
        manifest = read_manifest(out_dir)
    except DataError:
        return None
    params = manifest.get("parameters") or {}
    wanted = {"recipe": "kaggle-exact", "lead": lead, "test_fraction": test_fraction, "seed": seed}
    if manifest.get("heart_version") != __version__ or "sample_of" in manifest:
        return None
    if any(params.get(key) != value for key, value in wanted.items()):
        return None
    rhythm = manifest.get("rhythm") or {}
    if rhythm.get("columns") != list(RHYTHM_COLUMNS) or rhythm.get("definitions") != DEFINITIONS:
        return None  # built before these rhythm columns (or these formulas) existed
    records = list(manifest.get("records") or [])
    if sorted(records + list(manifest.get("records_skipped") or [])) != sorted(RECORDS):
        return None
    pinned = pinned_sha256()
    sources = manifest.get("source_sha256") or {}
    expected = [name for record in records for name in record_files(record)]
    if any(sources.get(name) != pinned[name] for name in expected):
        return None
    listed = manifest.get("files") or {}
    wanted_files = {part_name(split, part) for split in SPLITS for part in PARTS}
    if not wanted_files <= set(listed) or changed_files(out_dir, manifest):
        return None  # the files on disk are not the ones the manifest lists
    return manifest


def fetch(
    out_dir: str | Path,
    records_dir: str | Path,
    *,
    url: str,
    source: str | Path | None = None,
    lead: str = "channel0",
    test_fraction: float = 0.2,
    seed: int = 42,
    sample_out: str | Path | None = None,
    progress: Progress | None = None,
) -> FetchResult:
    """Get the records (from ``url`` into ``records_dir``, or verified in ``source``) and build.

    Returns what was done; raises HeartError/DataError with one actionable line otherwise.
    Nothing in ``out_dir`` changes unless the whole build succeeds.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, folder=True, kind="dataset")  # never a run, search or export
    if sample_out is not None:
        check_output(sample_out, option="--sample-out", folder=True, kind="dataset")
    ensure_writable(out_dir, "choose a writable folder with --out")
    with dataset_lock(out_dir):  # one fetch per dataset folder at a time
        return _fetch_locked(
            out_dir,
            Path(records_dir),
            url,
            source,
            lead,
            test_fraction,
            seed,
            sample_out,
            progress or Progress(),
        )


def _fetch_locked(
    out_dir: Path,
    records_dir: Path,
    url: str,
    source: str | Path | None,
    lead: str,
    test_fraction: float,
    seed: int,
    sample_out: str | Path | None,
    progress: Progress,
) -> FetchResult:
    clean_stale_staging(out_dir)  # left by a build killed mid-way, even if nothing is rebuilt
    if sample_out is not None:
        ensure_writable(Path(sample_out), "choose a writable folder for --sample-out")
    downloaded: list[str] = []
    if source is not None:
        records_dir = Path(source)
        progress.stage(f"verifying the records in {records_dir}")
        verify_source(records_dir)
    else:
        records_dir = Path(records_dir)
        ensure_writable(records_dir, "choose a writable records folder (data.records)")
        progress.stage(f"verifying the records in {records_dir}")
        downloaded = download_records(records_dir, url, progress)

    manifest = current_manifest(out_dir, lead=lead, test_fraction=test_fraction, seed=seed)
    status = "up to date"
    if manifest is None:
        progress.stage(f"building the dataset in {out_dir}")
        progress.task(CUTTING, len(RECORDS))
        manifest = build_dataset(
            records_dir,
            out_dir,
            lead=lead,
            test_fraction=test_fraction,
            seed=seed,
            on_record=lambda _record: progress.advance(),
        )
        progress.done(CUTTING)
        status = "built"
    result = FetchResult(status, out_dir, records_dir, manifest, downloaded)
    if sample_out is not None:
        progress.stage(f"writing the sample to {sample_out}")
        result.sample_dir = Path(sample_out)
        result.sample = make_sample(out_dir, sample_out, seed=SAMPLE_SEED)
    return result
