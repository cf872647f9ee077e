"""`heart fetch --import`: beat files users already have, validated, in the dataset layout.

Accepted files (187 beat values and an integer class label per row):

* the Kaggle "ECG Heartbeat Categorization" CSVs (``mitbih_train.csv``, ``mitbih_test.csv``,
  ``ptbdb_normal.csv``, ``ptbdb_abnormal.csv``): no header, 187 values, then the label;
  also the variant pandas writes (``df.to_csv(path)``): a header row of column numbers and
  a leading index column;
* the MADS course parquet files (``heart_big_train.parq``, ``heart_train.parq``, ...):
  columns ``"0"``..``"186"`` and a float ``"target"``.

Split naming: ``NAME_train.*`` and ``NAME_test.*`` become the train and test parts of split
``NAME`` (``mitbih_train.csv`` + ``mitbih_test.csv`` -> split ``mitbih``). Files without a
``_train``/``_test`` suffix are pooled per split and divided by a stratified random split
([data] test_fraction, seed): ``ptbdb_normal.csv`` + ``ptbdb_abnormal.csv`` -> split
``ptbdb`` (labels as in the files: 0 normal, 1 abnormal); any other file -> a split named
after it. Class names: the AAMI names N S V F Q for the MIT-BIH files (``mitbih_*``,
``heart_big_*``, labels 0..4), otherwise ``"0"``, ``"1"``, ... up to the largest label.

Errors name the file and its line (CSV, 1-based, as an editor shows it) or row (parquet,
0-based, as pandas shows it). Nothing is written unless every file is valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from heartcli import __version__
from heartcli.data.beats import BEAT_LENGTH, RATE_HZ
from heartcli.data.build import dataset_lock, random_split, write_dataset
from heartcli.data.dataset import (
    AAMI_CLASSES,
    MANIFEST,
    PARTS,
    BeatSet,
    load_split,
    read_manifest,
)
from heartcli.errors import DataError, UsageError
from heartcli.io import check_output, sha256_file
from heartcli.progress import Progress

SOURCE = "imported files (heart fetch --import)"
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parq", ".parquet")
MAX_CLASSES = 100


@dataclass(frozen=True)
class Family:
    """What a file name tells about its labels."""

    name: str
    classes: list[str] | None  # None: "0".."max label"
    rate_hz: float | None


MITBIH = Family("MIT-BIH", list(AAMI_CLASSES), RATE_HZ)
PTB = Family("PTB", ["0", "1"], None)
OTHER = Family("", None, None)


def family_of(split: str) -> Family:
    if split.startswith(("mitbih", "heart_big")):
        return MITBIH
    if split.startswith("ptbdb"):
        return PTB
    return OTHER


def plan(paths: Sequence[str | Path]) -> dict[str, dict[str, list[Path]]]:
    """Group the files into splits and parts ("train", "test" or "all")."""
    groups: dict[str, dict[str, list[Path]]] = {}
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        suffix = path.suffix.lower()
        if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
            raise UsageError(
                f"{path}: cannot import a {suffix or 'suffix-less'} file; "
                "give Kaggle .csv files or MADS .parq/.parquet files"
            )
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        if path.resolve() in seen:
            raise UsageError(f"{path}: given twice")
        seen.add(path.resolve())
        stem = path.name[: -len(path.suffix)]
        split, part = stem, "all"
        for name in PARTS:
            if stem.endswith(f"_{name}") and len(stem) > len(name) + 1:
                split, part = stem[: -len(name) - 1], name
        if part == "all" and stem.startswith("ptbdb_"):
            split = "ptbdb"
        parts = groups.setdefault(split, {})
        if part in PARTS and part in parts:
            raise UsageError(
                f"{path}: split {split!r} already has a {part} file ({parts[part][0]})"
            )
        parts.setdefault(part, []).append(path)
    for split, parts in groups.items():
        if "all" in parts and len(parts) > 1:
            raise UsageError(
                f"{parts['all'][0]}: split {split!r} mixes files with and without a "
                "_train/_test suffix; rename them consistently"
            )
        for have, lack in (("train", "test"), ("test", "train")):
            if have in parts and lack not in parts:
                raise UsageError(
                    f"{parts[have][0]}: the {lack} part of split {split!r} is missing "
                    f"(expected a file named {split}_{lack}{parts[have][0].suffix}); pass both, "
                    "or a file without a _train/_test suffix to have it split"
                )
    return groups


# --------------------------------------------------------------------------- reading


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_layout(path: Path) -> tuple[bool, bool]:
    """(has a header row, has a leading index column) from the first line."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    fields = [f.strip().strip('"') for f in first.split(",")]
    index = bool(fields) and fields[0] in ("", "Unnamed: 0", "index")
    names = fields[1:] if index else fields
    header = bool(names) and names == [str(i) for i in range(len(names))]
    if not header:
        index = False
    return header, index


def _csv_widths(labelled: bool) -> tuple[int, ...]:
    """Columns a beat CSV row may have (after any index): the beat and its label, or the beat."""
    return (BEAT_LENGTH + 1,) if labelled else (BEAT_LENGTH, BEAT_LENGTH + 1)


def _diagnose_csv(path: Path, header: bool, index: bool, labelled: bool = True) -> str:
    """The first bad line of a CSV pandas could not read as numbers, as a message.

    ``labelled`` False accepts rows without the label column too (beats to classify).
    """
    widths = tuple(w + int(index) for w in _csv_widths(labelled))
    label = " and the label" if labelled else ", optionally the label"
    what = f"{BEAT_LENGTH} values{label}" + (" after the index" if index else "")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1 and header:
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(",")
            if len(fields) not in widths:
                expected = " or ".join(str(w) for w in widths)
                return (
                    f"{path}: line {lineno} has {len(fields)} columns, expected {expected} ({what})"
                )
            for col, text in enumerate(fields, start=1):
                if index and col == 1:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    return f"{path}: line {lineno}, column {col}: {text.strip()!r} is not a number"
                if not math.isfinite(value):
                    return (
                        f"{path}: line {lineno}, column {col}: {text.strip()} is not a finite "
                        "number; drop or repair the row"
                    )
    return f"{path}: not a readable beat CSV"


Read = tuple[np.ndarray, np.ndarray | None, Callable[[int], str]]


def read_csv(path: Path, labelled: bool = True) -> Read:
    """Beat values (float64 [n, 187]) and raw labels of a Kaggle CSV, and a row namer.

    With ``labelled`` False a CSV of 187 columns is read too; its labels are None.
    """
    header, index = _csv_layout(path)
    skip = int(header)
    try:
        frame = pd.read_csv(
            path,
            header=None,
            skiprows=skip,
            dtype=np.float64,
            index_col=0 if index else None,
            skip_blank_lines=True,
        )
        values = frame.to_numpy(dtype=np.float64)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        raise DataError(_diagnose_csv(path, header, index, labelled)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file holds no rows") from None
    if values.shape[1] not in _csv_widths(labelled) or not np.isfinite(values).all():
        raise DataError(_diagnose_csv(path, header, index, labelled))

    def where(row: int) -> str:
        return f"line {row + 1 + skip}"

    labels = values[:, BEAT_LENGTH] if values.shape[1] > BEAT_LENGTH else None
    return values[:, :BEAT_LENGTH], labels, where


def read_parquet(path: Path, labelled: bool = True) -> Read:
    """Beat values (float64 [n, 187]) and raw labels of a MADS parquet file, and a row namer.

    With ``labelled`` False a file without "target" is read too; its labels are None.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    names = table.column_names
    beat_cols = sorted((c for c in names if c.isdigit()), key=int)
    if ("target" not in names and labelled) or beat_cols != [str(i) for i in range(BEAT_LENGTH)]:
        target = ' and "target"' if labelled else ' (and optionally "target")'
        raise DataError(
            f'{path}: expected {BEAT_LENGTH} beat columns "0".."{BEAT_LENGTH - 1}"{target}, '
            f"got {len(beat_cols)} beat columns"
            f"{' and no target' if labelled and 'target' not in names else ''}"
        )

    def where(row: int) -> str:
        return f"row {row}"

    def column(name: str) -> np.ndarray:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            values = col.to_pylist()
            for row, value in enumerate(values):
                if value is None or not _is_number(str(value)):
                    raise DataError(
                        f'{path}: {where(row)}, column "{name}": {value!r} is not a number'
                    )
            return np.asarray([float(v) for v in values], dtype=np.float64)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)

    x = np.empty((table.num_rows, BEAT_LENGTH), dtype=np.float64)
    for i, name in enumerate(beat_cols):
        x[:, i] = column(name)
    y = column("target") if "target" in names else None
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f'{path}: {where(row)}, column "{col}": {x[row, col]} is not a finite number; '
            "drop or repair the row"
        )
    return x, y, where


def read_file(path: Path, labelled: bool = True) -> Read:
    if path.suffix.lower() in CSV_SUFFIXES:
        return read_csv(path, labelled)
    return read_parquet(path, labelled)


def check_labels(
    path: Path, y: np.ndarray, where: Callable[[int], str], family: Family
) -> np.ndarray:
    """Whole, non-negative labels within the family's classes; returns them as int64."""
    n_classes = len(family.classes) if family.classes else MAX_CLASSES
    span = f"0..{n_classes - 1}"
    who = f"{family.name} labels are" if family.name else "labels must be"
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{path}: {where(row)}: label {y[row]} is not a whole class index ({who} {span})"
        )
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: {where(row)}: label {int(y[row])} is out of range ({who} {span})")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- writing


def _beats(files: list[tuple[Path, np.ndarray, np.ndarray]], classes: list[str]) -> BeatSet:
    x = np.concatenate([f[1] for f in files]).astype(np.float32)
    y = np.concatenate([f[2] for f in files])
    return BeatSet(x, y, classes=classes)


def import_files(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 42,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Validate ``paths`` and write them in the dataset layout into ``out_dir``; the manifest.
    ``progress`` hears ``stage(f"reading {path}")`` before each file is read."""
    out_dir = Path(out_dir)
    check_output(out_dir, folder=True, kind="dataset")  # never a run, search or export
    with dataset_lock(out_dir):  # the earlier import read below is the one replaced
        return _import_locked(paths, out_dir, test_fraction, seed, progress or Progress())


Found = dict[str, dict[str, list[tuple[Path, np.ndarray, np.ndarray]]]]


def _import_locked(
    paths: Sequence[str | Path],
    out_dir: Path,
    test_fraction: float,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    groups = plan(paths)
    previous = _previous_import(out_dir)
    read = _read_all(groups, progress)
    splits, imported, classes = _splits(read, test_fraction, seed)
    if previous is not None:
        _keep_previous(out_dir, previous, classes, splits, imported)
    family = family_of(next(iter(read)))
    manifest: dict[str, Any] = {
        "heart_version": __version__,
        "source": SOURCE,
        "classes": classes,
        "input_length": BEAT_LENGTH,
        "sampling_rate_hz": family.rate_hz if len({family_of(s).name for s in read}) == 1 else None,
        "parameters": {"test_fraction": test_fraction, "seed": seed},
        "imported": imported,
        "rhythm": None,
        "rhythm_note": "no rhythm columns: imported beat files carry no beat timing "
        "(build from the records with `heart fetch` for rr_pre, rr_post, ...)",
    }
    return write_dataset(out_dir, splits, manifest)


def _read_all(groups: dict[str, dict[str, list[Path]]], progress: Progress) -> Found:
    """Every file read and its labels checked, grouped by split and part."""
    read: Found = {}
    for split, parts in groups.items():
        family = family_of(split)
        for part, files in parts.items():
            for path in files:
                progress.stage(f"reading {path}")
                x, y_raw, where = read_file(path)
                assert y_raw is not None  # labelled files only: read_file raised otherwise
                if len(x) == 0:
                    raise DataError(f"{path}: the file holds no rows")
                y = check_labels(path, y_raw, where, family)
                read.setdefault(split, {}).setdefault(part, []).append((path, x, y))
    return read


def _splits(
    read: Found, test_fraction: float, seed: int
) -> tuple[dict[str, tuple[BeatSet, BeatSet]], dict[str, Any], list[str]]:
    """The train and test parts of each split, what the manifest says of its files, and
    the classes every split shares."""
    splits: dict[str, tuple[BeatSet, BeatSet]] = {}
    imported: dict[str, Any] = {}
    classes: list[str] | None = None
    for split, found in read.items():
        family = family_of(split)
        top = max(int(y.max()) for files in found.values() for _, _, y in files)
        names = family.classes or [str(i) for i in range(top + 1)]
        if classes is not None and names != classes:
            raise UsageError(
                f"split {split!r} has classes {names}, another has {classes}; "
                "import them into separate folders (--out)"
            )
        classes = names

        info: dict[str, Any] = {
            part: [{"file": p.name, "rows": len(y), "sha256": sha256_file(p)} for p, _, y in files]
            for part, files in found.items()
        }
        if "all" in found:
            pooled = _beats(found["all"], names)
            try:
                splits[split] = random_split(pooled, test_fraction, seed)
            except ValueError as exc:
                raise DataError(
                    f"{found['all'][0][0]}: cannot split {split!r} into train and test ({exc})"
                ) from None
            info["split_by"] = f"stratified random, test_fraction {test_fraction}, seed {seed}"
        else:
            splits[split] = (_beats(found["train"], names), _beats(found["test"], names))
            info["split_by"] = "the files' own train/test"
        imported[split] = info
    assert classes is not None
    return splits, imported, classes


def _keep_previous(
    out_dir: Path,
    previous: dict[str, Any],
    classes: list[str],
    splits: dict[str, tuple[BeatSet, BeatSet]],
    imported: dict[str, Any],
) -> None:
    """Keep the splits of an earlier import into this folder (same classes only)."""
    if list(previous.get("classes", [])) != classes:
        raise UsageError(
            f"{out_dir}: holds an earlier import with classes {previous.get('classes')}, "
            f"these files have {classes}; import them into another folder with --out"
        )
    for split, info in (previous.get("imported") or {}).items():
        if split not in splits:
            splits[split] = (
                load_split(out_dir, split, "train"),
                load_split(out_dir, split, "test"),
            )
            imported[split] = info


def _previous_import(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of an earlier import into ``out_dir``; refuse a folder `heart fetch` built."""
    if not (out_dir / MANIFEST).exists():
        return None
    manifest = read_manifest(out_dir)
    if manifest.get("source") != SOURCE:
        raise UsageError(
            f"{out_dir}: holds the dataset built from the records by `heart fetch`; "
            "import into another folder with --out DIR"
        )
    return manifest
