"""The beat dataset on disk: one parquet per split part, plus a manifest.

Layout (written by `heart fetch`, read by every other command)::

    DIR/manifest.json
    DIR/<split>/train.parquet
    DIR/<split>/test.parquet

Columns: "0".."L-1" (float32 beat samples), "target" (int64 class index), "record"
(string, "" when unknown), "sample" (int64, R-peak index in the 360 Hz record, -1
when unknown) and, for datasets built from records, the rhythm columns ``RHYTHM_COLUMNS``
(float32 seconds and ratios; see :mod:`heartcli.data.rhythm`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from heartcli.config import RHYTHM_FEATURES
from heartcli.errors import DataError, UsageError
from heartcli.io import atomic_path, read_json

AAMI_CLASSES = ["N", "S", "V", "F", "Q"]
PARTS = ("train", "test")
RHYTHM_COLUMNS = RHYTHM_FEATURES
MANIFEST = "manifest.json"
MAX_CLASSES = 1000  # class indices in a beat file: 0..999


@dataclass
class BeatSet:
    """Beats as arrays: ``x`` float32 [n, length], ``y`` int64 [n], with their provenance.

    ``rhythm`` is float32 [n, len(RHYTHM_COLUMNS)] for beats cut from records, else None.
    """

    x: np.ndarray
    y: np.ndarray
    record: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    sample: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    classes: list[str] = field(default_factory=lambda: list(AAMI_CLASSES))
    rhythm: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.record) != n:
            self.record = np.full(n, "", dtype=object)
        if len(self.sample) != n:
            self.sample = np.full(n, -1, dtype=np.int64)
        if self.rhythm is not None and self.rhythm.shape != (n, len(RHYTHM_COLUMNS)):
            raise ValueError(f"rhythm must be [{n}, {len(RHYTHM_COLUMNS)}]")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def length(self) -> int:
        return int(self.x.shape[1])

    def counts(self) -> dict[str, int]:
        """Beats per class name, every class listed (0 when absent)."""
        found = np.bincount(self.y, minlength=len(self.classes))
        return {name: int(found[i]) for i, name in enumerate(self.classes)}

    def subset(self, index: np.ndarray) -> BeatSet:
        rhythm = None if self.rhythm is None else self.rhythm[index]
        return BeatSet(
            self.x[index],
            self.y[index],
            self.record[index],
            self.sample[index],
            self.classes,
            rhythm,
        )


def to_table(beats: BeatSet) -> pa.Table:
    by_column = np.ascontiguousarray(beats.x.T, dtype=np.float32)
    columns: dict[str, Any] = {str(i): pa.array(by_column[i]) for i in range(beats.length)}
    columns["target"] = pa.array(beats.y, type=pa.int64())
    columns["record"] = pa.array([str(r) for r in beats.record], type=pa.string())
    columns["sample"] = pa.array(beats.sample, type=pa.int64())
    if beats.rhythm is not None:
        rhythm = np.ascontiguousarray(beats.rhythm.T, dtype=np.float32)
        for i, name in enumerate(RHYTHM_COLUMNS):
            columns[name] = pa.array(rhythm[i])
    meta = {b"heart.classes": json.dumps(beats.classes).encode()}
    return pa.table(columns).replace_schema_metadata(meta)


def write_beats(path: str | Path, beats: BeatSet) -> None:
    """Write one split part as parquet, atomically."""
    with atomic_path(path) as tmp:
        # Dictionary encoding helps only the record column; on float beats it is wasted work.
        pq.write_table(to_table(beats), tmp, compression="zstd", use_dictionary=["record"])


def read_beats(path: str | Path, classes: list[str] | None = None) -> BeatSet:
    """Read beats in the dataset layout from parquet (columns "0".."L-1" and "target")."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; build the dataset with `heart fetch`")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; pass a parquet file of beats")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    names = table.column_names
    value_cols = [c for c in names if c.isdigit()]
    if not value_cols or "target" not in names:
        raise DataError(
            f'{path}: expected columns "0".."N" and "target" (the dataset layout of heart fetch)'
        )
    value_cols.sort(key=int)
    if [int(c) for c in value_cols] != list(range(len(value_cols))):
        raise DataError(f'{path}: beat columns must be "0".."{len(value_cols) - 1}" without gaps')
    text = _text_column(table, [*value_cols, "target"])
    if text:
        raise DataError(
            f'{path}: column "{text}" holds {table.schema.field(text).type}, not numbers; '
            "fix the file"
        )
    x = _float32(table, value_cols)
    target = table.column("target").to_numpy()
    row = _non_finite_row(x)
    if row is not None:
        raise DataError(f"{path}: row {row} has a NaN or infinite value; drop or repair it")
    if np.issubdtype(target.dtype, np.floating) and (
        not np.all(np.isfinite(target)) or np.any(target != np.round(target))
    ):
        raise DataError(f"{path}: target must hold whole class indices")
    if len(target) and target.max() >= MAX_CLASSES:
        raise DataError(
            f"{path}: target must hold class indices 0..{MAX_CLASSES - 1} (the largest is "
            f"{target.max():g}); fix the labels"
        )
    y = target.astype(np.int64)
    meta = table.schema.metadata or {}
    if classes is None and b"heart.classes" in meta:
        classes = json.loads(meta[b"heart.classes"])
    if classes is None:
        n_classes = int(y.max()) + 1 if len(y) else 0
        classes = (
            list(AAMI_CLASSES)
            if n_classes == len(AAMI_CLASSES)
            else [str(i) for i in range(n_classes)]
        )
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        bad = int(np.argmax((y < 0) | (y >= len(classes))))
        raise DataError(f"{path}: row {bad} has label {int(y[bad])}, outside 0..{len(classes) - 1}")
    record = (
        table.column("record").to_numpy(zero_copy_only=False).astype(object)
        if "record" in names
        else np.array([], dtype=object)
    )
    sample = (
        table.column("sample").to_numpy().astype(np.int64)
        if "sample" in names
        else np.array([], dtype=np.int64)
    )
    return BeatSet(x, y, record, sample, list(classes), read_rhythm(path, table))


def _text_column(table: pa.Table, columns: Sequence[str]) -> str | None:
    """The first of ``columns`` that does not hold numbers (floats or integers), if any."""
    import pyarrow.types as pat

    for name in columns:
        kind = table.schema.field(name).type
        if not (pat.is_floating(kind) or pat.is_integer(kind)):
            return name
    return None


def _float32(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """``columns`` side by side as one float32 [rows, columns] array."""
    values = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    for i, name in enumerate(columns):
        values[:, i] = table.column(name).to_numpy()
    return values


def _non_finite_row(values: np.ndarray) -> int | None:
    """The first row holding a NaN or an infinite value, if any."""
    bad = ~np.isfinite(values)
    return int(np.argwhere(bad)[0][0]) if bad.any() else None


def read_rhythm(path: Path, table: pa.Table) -> np.ndarray | None:
    """The rhythm columns, when the file has them (all of them, numbers, finite), else None:
    the one reader of rhythm columns (datasets and `heart predict`'s beat files)."""
    present = [c for c in RHYTHM_COLUMNS if c in table.column_names]
    if not present:
        return None
    if len(present) != len(RHYTHM_COLUMNS):
        missing = [c for c in RHYTHM_COLUMNS if c not in present]
        raise DataError(
            f"{path}: rhythm columns incomplete (missing {', '.join(missing)}); "
            "rebuild the dataset with `heart fetch`"
        )
    text = _text_column(table, RHYTHM_COLUMNS)
    if text:
        raise DataError(
            f"{path}: rhythm column {text} holds {table.schema.field(text).type}, not "
            "floats; rebuild the dataset with `heart fetch`"
        )
    rhythm = _float32(table, RHYTHM_COLUMNS)
    row = _non_finite_row(rhythm)
    if row is not None:
        raise DataError(f"{path}: row {row} has a NaN or infinite rhythm value; rebuild it")
    return rhythm


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise DataError(
            f"{data_dir}: no dataset here ({MANIFEST} missing); "
            "build one with `heart fetch` or point [data] dir at one"
        )
    manifest = read_json(path, "rebuild it with `heart fetch`")
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a heart dataset manifest; rebuild it with `heart fetch`")
    return manifest


def part_name(split: str, part: str) -> str:
    """A split part's file, relative to the dataset folder (as the manifest lists it)."""
    return f"{split}/{part}.parquet"


def split_path(data_dir: str | Path, split: str, part: str) -> Path:
    return Path(data_dir) / part_name(split, part)


DROP = "drop"


def class_mapping(classes: list[str], mapping: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """``[data] classes`` applied to a class list: the classes left, and old index -> new.

    ``mapping`` maps a class name to "drop" or to the class it merges into; an old index
    maps to -1 when its class is dropped. Raises UsageError (exit 2) for names the data
    does not have, or for a mapping that leaves fewer than 2 classes.
    """
    for name, target in mapping.items():
        if name not in classes:
            raise UsageError(
                f'data.classes: no class "{name}" in the data (classes: {", ".join(classes)})'
            )
        if target != DROP and (target not in classes or target in mapping):
            raise UsageError(
                f'data.classes.{name}: "{target}" is not a class that stays; use "drop" or '
                f"one of {', '.join(c for c in classes if c not in mapping)}"
            )
    kept = [c for c in classes if c not in mapping]
    if len(kept) < 2:
        raise UsageError(f"data.classes: leaves {len(kept)} class; keep at least 2")
    index = np.array(
        [
            kept.index(c) if c in kept else (-1 if mapping[c] == DROP else kept.index(mapping[c]))
            for c in classes
        ],
        dtype=np.int64,
    )
    return kept, index


def apply_classes(beats: BeatSet, mapping: dict[str, str]) -> BeatSet:
    """The beats with ``[data] classes`` applied: dropped classes removed, merged relabelled."""
    if not mapping:
        return beats
    kept, index = class_mapping(list(beats.classes), mapping)
    new_y = index[beats.y]
    out = beats.subset(np.flatnonzero(new_y >= 0))
    out.y = new_y[new_y >= 0]
    out.classes = kept
    return out


def changed_files(data_dir: str | Path, manifest: dict[str, Any]) -> list[str]:
    """The files the manifest lists (``files``: path -> SHA-256) that are missing or differ."""
    from heartcli.io import sha256_file

    bad = []
    for name, digest in (manifest.get("files") or {}).items():
        path = Path(data_dir) / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    return bad


def _check_part(data_dir: str | Path, manifest: dict[str, Any], split: str, part: str) -> None:
    """A split part must be the file its manifest lists: never train on a half-swapped set."""
    listed = manifest.get("files")
    name = part_name(split, part)
    if not isinstance(listed, dict) or name not in listed:
        raise DataError(
            f'{Path(data_dir) / MANIFEST}: lists no SHA-256 for {name} (no "files"); '
            "rebuild the dataset with `heart fetch`"
        )
    if changed_files(data_dir, {"files": {name: listed[name]}}):
        raise DataError(
            f"{split_path(data_dir, split, part)}: is not the file {MANIFEST} lists (its "
            "SHA-256 differs: a half-finished rebuild, or edited); rebuild with `heart fetch`"
        )


def dataset_splits(manifest: dict[str, Any]) -> list[str]:
    """The splits a dataset's manifest names (its ``splits`` counts, else its ``files``)."""
    splits = manifest.get("splits")
    if isinstance(splits, dict) and splits:
        return [str(s) for s in splits]
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    return sorted({str(name).split("/")[0] for name in files or {} if "/" in str(name)})


def check_split(data_dir: str | Path, manifest: dict[str, Any], split: str) -> None:
    """``split`` must be one of the dataset's own splits: a name its manifest lists, never a
    path (``../x``) that would read files the manifest's checksums do not cover."""
    known = dataset_splits(manifest)
    if split not in known or "/" in split or "\\" in split or split in (".", ".."):
        raise UsageError(
            f"split {split!r}: not a split of {data_dir} (its splits: "
            f"{', '.join(known) or 'none'}); pass one of them with --split or data.split"
        )


def load_split(
    data_dir: str | Path, split: str, part: str, *, classes: dict[str, str] | None = None
) -> BeatSet:
    """One part ("train" or "test") of a split of the dataset in ``data_dir``.

    ``classes`` is ``[data] classes``: classes to drop or merge (see ``apply_classes``).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    manifest = read_manifest(data_dir)
    check_split(data_dir, manifest, split)
    path = split_path(data_dir, split, part)
    if not path.exists():
        known = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
        raise DataError(
            f"{data_dir}: split {split!r} has no {part}.parquet; splits here: {', '.join(known)}"
        )
    _check_part(data_dir, manifest, split, part)
    beats = read_beats(path, classes=list(manifest.get("classes", AAMI_CLASSES)))
    return apply_classes(beats, classes or {})


def training_lead(manifest: dict[str, Any], fallback: str) -> str:
    """The lead the run's dataset was built from, as its data manifest records it."""
    data_dir = (manifest.get("data") or {}).get("dir")
    if data_dir:
        try:
            lead = (read_manifest(data_dir).get("parameters") or {}).get("lead")
        except DataError:
            lead = None
        if lead in ("channel0", "MLII"):
            return str(lead)
    return fallback
