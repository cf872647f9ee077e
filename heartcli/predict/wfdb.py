"""WFDB files of `heart predict --format wfdb` and `heart evaluate --records`: the EC57
class of each model class, and a record's beats written as an annotation file
(``wfdb.wrann``) whose symbols are those classes. Records are read by
:mod:`heartcli.data.records`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from heartcli.data.mitdb import AAMI_SYMBOLS
from heartcli.errors import HeartError, UsageError
from heartcli.io import atomic_path, check_output

ANNOTATOR = "heart"
SYMBOLS = AAMI_SYMBOLS  # the AAMI classes, as EC57 and the annotation symbols


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
    inputs: list[Path] | tuple[Path, ...] = (),
) -> Path:
    """``OUT_DIR/<record>.<annotator>`` by ``wfdb.wrann``, built in a temporary folder of
    the system's and written in place through a temp file and a rename (nothing of it is
    left in OUT_DIR however the process ends); an existing file is replaced only with
    ``force``, and never one of ``inputs`` (the record's own files, the model)."""
    import wfdb

    target = check_wfdb_target(out_dir, record, annotator, force, inputs)
    with tempfile.TemporaryDirectory(prefix="heart-wrann-") as staging:
        wfdb.wrann(
            record,
            annotator,
            np.asarray(sample, dtype=np.int64),
            symbol=list(symbols),
            aux_note=list(aux),
            fs=fs,
            write_dir=staging,
        )
        data = (Path(staging) / target.name).read_bytes()
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    except HeartError as exc:
        raise HeartError(f"{exc} (choose a writable --out)") from None
    return target


def check_wfdb_target(
    out_dir: str | Path,
    record: str,
    annotator: str,
    force: bool,
    inputs: list[Path] | tuple[Path, ...] = (),
) -> Path:
    """``OUT_DIR/<record>.<annotator>``, once it is sure it may be written: a folder (not a
    file), a new file or one ``force`` replaces, and none of ``inputs`` nor a file of a
    folder heart keeps (:func:`heartcli.io.check_output`)."""
    check_annotator(annotator)
    out_dir = Path(out_dir)
    check_output(out_dir, folder=True)
    target = out_dir / f"{record}.{annotator}"
    check_output(target, inputs=list(inputs))
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to replace it")
    return target
