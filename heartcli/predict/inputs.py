"""What `heart predict` classifies: a beat file in the layouts `heart fetch --import` reads
(its labels are the reference), or a WFDB record cut by :mod:`heartcli.predict.segment`
with the recipe of `heart fetch` (the .atr is the reference), with the rhythm features a
rhythm model takes; and the check that beats are in the range the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.config import RHYTHM_FEATURES
from heartcli.errors import DataError, UsageError
from heartcli.model.inference import model_inputs
from heartcli.predict.load import Model

BEAT_SUFFIXES = (".csv", ".parquet", ".parq")


@dataclass
class Beats:
    """Beats to classify and where they come from."""

    source: str
    x: np.ndarray
    record: np.ndarray
    sample: np.ndarray
    reference: np.ndarray | None  # class index per beat, -1 where unknown
    method: str  # "file", "annotations" or "detected"
    lead: str | None = None
    notes: list[str] = field(default_factory=list)
    detection: dict[str, Any] | None = None
    rhythm: np.ndarray | None = None  # float32 [n, 9], when the input has beat timing
    fs: float | None = None  # a record's own sampling rate (``sample`` is at it)
    duration_s: float | None = None  # a record's length in seconds

    def inputs(self, model: Model) -> list[np.ndarray]:
        """What ``model`` takes: the beats, and their rhythm features for a rhythm model."""
        return model_inputs(self.x, self.rhythm, model.rhythm, self.source)

    def subset(self, keep: np.ndarray) -> Beats:
        """The beats where ``keep`` is True, with everything that comes per beat."""
        return replace(
            self,
            x=self.x[keep],
            record=self.record[keep],
            sample=self.sample[keep],
            reference=None if self.reference is None else self.reference[keep],
            rhythm=None if self.rhythm is None else self.rhythm[keep],
            notes=list(self.notes),
        )


def read_input(
    path: str | Path,
    model: Model,
    *,
    lead: str = "auto",
    peaks: str = "auto",
    detector: str | None = None,
) -> Beats:
    """A beat file or a WFDB record, as beats the model can take."""
    from heartcli.data.dataset import AAMI_CLASSES
    from heartcli.data.records import is_record
    from heartcli.predict.segment import segment_record

    path = Path(path)
    if is_record(path):
        chosen = "MLII" if lead == "auto" and model.lead == "MLII" else lead
        seg = segment_record(
            path,
            lead=chosen,
            peaks=peaks,  # type: ignore[arg-type]
            detector=detector,
        )
        beats = Beats(
            str(path),
            seg.x,
            np.full(len(seg.x), seg.record, dtype=object),
            seg.sample,
            None if seg.reference is None else model.reference_index(seg.reference, AAMI_CLASSES),
            seg.method,
            seg.lead,
            seg.notes,
            seg.detection,
            seg.rhythm,
            seg.fs_in,
            seg.duration_s,
        )
    elif path.suffix.lower() in BEAT_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        beats = _read_beat_file(path, model)
    elif path.exists():
        raise UsageError(
            f"{path}: unknown input type {path.suffix or '(no suffix)'}; give beats as .csv or "
            ".parquet, or a WFDB record path without extension (e.g. data/mitdb/100)"
        )
    else:
        raise UsageError(f"{path}: no such file, and no WFDB record {path}.hea")
    if len(beats.x) == 0:
        raise DataError(f"{path}: no beats to classify")
    if beats.x.shape[1] != model.input_length:
        raise DataError(
            f"{path}: beats have {beats.x.shape[1]} samples but the model takes "
            f"{model.input_length}"
        )
    return beats


def _whole_in(labels: np.ndarray, k: int) -> bool:
    """Every label a whole class index in 0..k-1."""
    return bool(
        (labels == np.round(labels)).all()
        and labels.min(initial=0) >= 0
        and labels.max(initial=0) < k
    )


def _read_beat_file(path: Path, model: Model) -> Beats:
    """Beats in the `heart fetch --import` layouts (the importer's reader and checks)."""
    import pyarrow.parquet as pq

    from heartcli.data.dataset import AAMI_CLASSES
    from heartcli.data.importer import read_file

    x, labels, _ = read_file(path, labelled=False)
    n = len(x)
    record = np.full(n, "", dtype=object)
    sample = np.full(n, -1, dtype=np.int64)
    names: list[str] = []
    rhythm: np.ndarray | None = None
    if path.suffix.lower() != ".csv":
        names = pq.read_schema(path).names
        extra = [c for c in ("record", "sample") if c in names]
        if extra:
            table = pq.read_table(path, columns=extra)
            if "record" in extra:
                record = table.column("record").to_numpy(zero_copy_only=False).astype(object)
            if "sample" in extra:
                sample = table.column("sample").to_numpy().astype(np.int64)
    if model.rhythm:
        rhythm = _file_rhythm(path, names)
    notes: list[str] = []
    reference: np.ndarray | None = None
    if labels is None:
        notes.append("no labels in the file: predictions only")
    elif model.class_map and _whole_in(labels, len(AAMI_CLASSES)):
        # The model was trained with [data] classes: the file's labels are dataset classes.
        reference = model.reference_index(labels.astype(np.int64), AAMI_CLASSES)
    elif _whole_in(labels, len(model.classes)):
        reference = labels.astype(np.int64)
    else:
        notes.append("labels outside the model's classes: no agreement table")
    x = x.astype(np.float32)
    return Beats(str(path), x, record, sample, reference, "file", None, notes, rhythm=rhythm)


def _file_rhythm(path: Path, names: list[str]) -> np.ndarray:
    """The rhythm columns of a beat file, for a rhythm model: all nine, finite; else exit 2."""
    import pyarrow.parquet as pq

    missing = [c for c in RHYTHM_FEATURES if c not in names]
    if missing:
        raise UsageError(
            f"{path}: the model takes rhythm features, but the file has no columns "
            f"{', '.join(missing)}; use the dataset files `heart fetch` builds from the records "
            "(they have them), or give a WFDB record"
        )
    from heartcli.data.dataset import read_rhythm

    rhythm = read_rhythm(path, pq.read_table(path, columns=list(RHYTHM_FEATURES)))
    if rhythm is None:  # pragma: no cover (the columns are there: checked above)
        raise UsageError(f"{path}: no rhythm columns")
    return rhythm


def check_range(model: Model, x: np.ndarray, source: str | Path) -> None:
    """Refuse beats far outside the range the model was trained on (e.g. raw millivolts or
    ADC counts instead of min-max normalised beats): its answers there mean nothing.

    "Far" is more than the training range's own width beyond either end of it.
    """
    if not len(x):
        return
    lo, hi = model.input_range
    span = max(hi - lo, 1e-6)
    low, high = x.min(axis=1), x.max(axis=1)
    bad = np.flatnonzero((low < lo - span) | (high > hi + span))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{source}: {len(bad):,} of {len(x):,} beats are far outside the range the model "
            f"was trained on [{lo:g}, {hi:g}] (row {row}: {float(low[row]):.3g} to "
            f"{float(high[row]):.3g}); min-max normalise every beat to [0, 1] as `heart fetch` "
            "does"
        )
