"""The beat recipe of the Kaggle "ECG Heartbeat Categorization" MIT-BIH set, bit for bit.

That set (also the MADS course's parquet files) was not built the way Kachuee et al. 2018
describe. Its rows are reproduced exactly from the raw records by this recipe:

* signal: one lead as raw integer ADC units, no filtering;
* boundaries: the sample positions of ALL annotations of the record's .atr, beat or not;
* a row for every annotation whose symbol is an AAMI beat, except the record's last
  annotation: with r0 its sample and r1, r2 the next two annotations' samples (the signal
  length stands in for a missing r2), the segment is ``x[r0 : r1 + (r2 - r1) // 5 : 3]``:
  every third sample (120 Hz, not the 125 Hz the paper states), from the R-peak to 20% of
  the next RR interval past the next R-peak;
* min-max normalised over the whole segment to [0, 1] in float64, then the first 187
  values kept, cast to float32 and zero-padded to 187;
* label: the AAMI class of the row's own annotation.

The build is vectorised per record: segment minima and maxima come from ``reduceat`` over
each of the three sample phases, and the 187 kept values from one gather.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heartcli.data.mitdb import AAMI_MAP, FS_HZ
from heartcli.data.records import read_annotations, read_signal
from heartcli.data.rhythm import rows_rhythm

BEAT_LENGTH = 187
STRIDE = 3
TAIL_DIVISOR = 5
RATE_HZ = FS_HZ / STRIDE  # 120 Hz, the true rate of the Kaggle beats


def segment_beats(
    signal: np.ndarray,
    ann_samples: np.ndarray,
    ann_symbols: list[str] | np.ndarray,
    *,
    length: int = BEAT_LENGTH,
    stride: int = STRIDE,
    label_map: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one record into beats. Returns ``(x float32 [n, length], y int64, r_peak int64)``.

    ``signal`` is one lead (1-D, raw units); ``ann_samples``/``ann_symbols`` are all the
    record's annotations in order. Every annotation is a boundary; only those whose symbol
    is in ``label_map`` (default: the AAMI map) become rows, labelled by it.
    """
    mapping = AAMI_MAP if label_map is None else label_map
    samples = np.asarray(ann_samples, dtype=np.int64)
    symbols = np.asarray(ann_symbols, dtype=object)
    n_ann = len(samples)
    signal = np.asarray(signal)
    empty = (
        np.zeros((0, length), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    if n_ann < 2 or signal.ndim != 1 or len(signal) == 0:
        return empty

    # Rows: every beat annotation but the last annotation of the record.
    is_beat = np.array([s in mapping for s in symbols[:-1]], dtype=bool)
    rows = np.flatnonzero(is_beat)
    if len(rows) == 0:
        return empty
    r0 = samples[rows]
    r1 = samples[rows + 1]
    r2 = np.where(rows + 2 < n_ann, samples[np.minimum(rows + 2, n_ann - 1)], len(signal))
    end = np.minimum(r1 + (r2 - r1) // TAIL_DIVISOR, len(signal))
    start = np.clip(r0, 0, len(signal))
    # Number of samples in signal[start:end:stride].
    count = np.maximum(0, (end - start + stride - 1) // stride)
    keep = count > 0
    rows, start, count = rows[keep], start[keep], count[keep]
    labels = np.array([mapping[s] for s in symbols[rows]], dtype=np.int64)

    x = np.zeros((len(rows), length), dtype=np.float32)
    sig = signal.astype(np.float64)
    for phase in range(stride):
        sel = np.flatnonzero(start % stride == phase)
        if len(sel) == 0:
            continue
        strided = sig[phase::stride]
        # One sentinel so that an exclusive stop equal to the length is a valid index.
        padded = np.append(strided, 0.0)
        first = (start[sel] - phase) // stride
        stop = first + count[sel]
        bounds = np.empty(2 * len(sel), dtype=np.int64)
        bounds[0::2], bounds[1::2] = first, stop
        lo = np.minimum.reduceat(padded, bounds)[0::2]
        hi = np.maximum.reduceat(padded, bounds)[0::2]
        offsets = np.arange(length)
        take = first[:, None] + offsets[None, :]
        valid = offsets[None, :] < count[sel][:, None]
        values = padded[np.minimum(take, len(padded) - 1)]
        span = (hi - lo)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = np.where(span > 0, (values - lo[:, None]) / span, 0.0)
        x[sel] = np.where(valid, norm, 0.0).astype(np.float32)
    return x, labels, samples[rows]


def cut_beats(
    signal: np.ndarray,
    peaks: np.ndarray,
    symbols: list[str] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one beat cut of `heart predict` and `heart evaluate --records`, the same for
    annotated and detected R-peaks: :func:`segment_beats` with the beats' own R-peaks as
    the only boundaries. ``symbols`` (the annotations' symbols) keeps the beats among them,
    labelled by the AAMI map; without it every peak is a beat (label 0).

    The dataset (`heart fetch`, the Kaggle recipe) cuts at every annotation, so there a
    rhythm change or noise annotation right after a beat shortens that beat; a detector
    finds no such annotations, and a beat must not look different to the model because
    the .atr rather than the detector found it.
    """
    peaks = np.asarray(peaks, dtype=np.int64)
    if symbols is None:
        return segment_beats(signal, peaks, np.full(len(peaks), "N", dtype=object))
    symbols = np.asarray(symbols, dtype=object)
    is_beat = np.fromiter((s in AAMI_MAP for s in symbols), dtype=bool, count=len(symbols))
    return segment_beats(signal, peaks[is_beat], symbols[is_beat])


def record_beats(record_path: str | Path, lead: str = "channel0") -> tuple[np.ndarray, ...]:
    """The dataset rows of one record: ``(x, y, r_peak)``, its lead and .atr read by
    :mod:`heartcli.data.records`."""
    signal = read_signal(record_path, lead).samples
    samples, symbols = read_annotations(record_path)
    return segment_beats(signal, samples, symbols)


def record_rows(
    record_path: str | Path, lead: str = "channel0"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """The dataset rows of one record with their rhythm features.

    Returns ``(x, y, r_peak, rhythm float32 [n, 9], short)``; ``short`` is True for a record
    with fewer than 3 beat annotations (see :mod:`heartcli.data.rhythm`).
    """
    signal = read_signal(record_path, lead).samples
    samples, symbols = read_annotations(record_path)
    x, y, peaks = segment_beats(signal, samples, symbols)
    rhythm, short = rows_rhythm(samples, symbols, peaks, FS_HZ, x)
    return x, y, peaks, rhythm, short
