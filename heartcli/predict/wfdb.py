"""WFDB files of `heart predict --format wfdb` and `heart evaluate --records`: a record's
header, the EC57 class of each model class, and a record's beats written as an annotation
file (``wfdb.wrann``) whose symbols are those classes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartcli.data.mitdb import AAMI_SYMBOLS
from heartcli.errors import DataError, UsageError
from heartcli.io import staged_dir

ANNOTATOR = "heart"
SYMBOLS = AAMI_SYMBOLS  # the AAMI classes, as EC57 and the annotation symbols


@dataclass
class Header:
    fs: float
    length: int  # samples in the record


def read_header(path: Path) -> Header:
    import wfdb

    try:
        header = wfdb.rdheader(str(path))
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise DataError(f"{path}.hea: cannot read the record header ({exc})") from None
    fs = float(header.fs or 0)
    if fs <= 0:
        raise DataError(f"{path}.hea: sampling frequency {fs:g} Hz is not positive")
    return Header(fs, int(header.sig_len or 0))


def test_labels(classes: list[str]) -> np.ndarray:
    """Model class index -> EC57 class index (N S V F Q); a model with other classes
    cannot be scored by EC57 (exit 2)."""
    unknown = [c for c in classes if c not in SYMBOLS]
    if unknown:
        raise UsageError(
            f"the model's classes {', '.join(unknown)} are not AAMI classes (N, S, V, F, Q); "
            "EC57 scoring and WFDB annotations need a model trained on them"
        )
    return np.asarray([SYMBOLS.index(c) for c in classes], dtype=np.int64)


_ANNOTATOR = re.compile(r"^[A-Za-z0-9_]+$")


def check_annotator(name: str) -> str:
    if not _ANNOTATOR.match(name):
        raise UsageError(
            f"--annotator {name!r}: use letters, digits or _ (it is the file's extension)"
        )
    return name


def write_annotations(
    record: str,
    sample: np.ndarray,
    symbols: list[str],
    aux: list[str],
    fs: float,
    out_dir: str | Path,
    *,
    annotator: str = ANNOTATOR,
    force: bool = False,
) -> Path:
    """``OUT_DIR/<record>.<annotator>`` by ``wfdb.wrann``, written aside and moved in
    whole; an existing file is replaced only with ``force``."""
    import wfdb

    check_annotator(annotator)
    out_dir = Path(out_dir)
    target = out_dir / f"{record}.{annotator}"
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: not a folder")
    with staged_dir(target, prefix=".heart-wrann-", remedy="choose a writable --out") as staging:
        wfdb.wrann(
            record,
            annotator,
            np.asarray(sample, dtype=np.int64),
            symbol=list(symbols),
            aux_note=list(aux),
            fs=fs,
            write_dir=str(staging),
        )
        os.replace(staging / target.name, target)
    return target
