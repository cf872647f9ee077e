"""A raw WFDB record cut into model-ready beats, for `heart predict`.

The cut is the recipe of `heart fetch` (:func:`heartcli.data.beats.segment_beats`, the
Kaggle-exact recipe), on one lead in raw ADC units at 360 Hz:

* **boundaries**: the beats' own R-peaks and nothing else, one cut for both kinds of peaks
  (:func:`heartcli.data.beats.cut_beats`): the beat annotations of the record's ``.atr`` when
  there is one (their AAMI labels are the reference), or without it the R-peaks detected
  in the signal: by wfdb's gqrs (the default), each mark moved to the R-peak, or by wfdb's
  XQRS (``detector="xqrs"``). A beat at the same R-peaks is the same beat whichever found
  it. `heart fetch`'s dataset rows (the Kaggle recipe) also let the .atr's non-beat
  annotations (rhythm changes ``+``, noise ``~``, ...) cut the beat before them; here
  they do not, so a predicted beat equals its dataset row except where one did;
* **rate**: a record sampled at another rate is first resampled to 360 Hz with
  ``scipy.signal.resample_poly`` (a polyphase FIR with an anti-aliasing low-pass), and the
  annotation positions are scaled with it, so beats reach the model at the 120 Hz
  (360 / 3) it was trained on;
* **rhythm**: the RR features of every beat (:mod:`heartcli.data.rhythm`, the code of
  `heart fetch`), from the .atr's beat annotations, or from the detected R-peaks without
  one, and its template features (against the median of the record's beats); a rhythm
  model takes them as its second input;
* **lead**: see :func:`heartcli.data.records.choose_channel`. The Kaggle recipe takes
  channel 0 of every record, which is MLII in 46 of the 48 MIT-BIH records (102 and 104
  have V5 there), so MLII is what the model has seen: ``auto`` picks the lead named MLII
  when the record has one and otherwise falls back to channel 0 (saying so); a model
  trained on ``lead = "MLII"`` data requires it.

The record itself (header, lead, .atr, and every check of them) is read by
:mod:`heartcli.data.records`.

gqrs marks a QRS ~33 ms before its R-peak (where MIT-BIH's beats are annotated and the
beat cut starts); :func:`gqrs_peaks` moves each mark to the largest deflection within
50 ms. On the 22 DS1 records (EC57 rules) gqrs finds 99.84% of the beats at +P 99.70%,
XQRS 98.97% at 99.58%. XQRS is used as published, except for its local-maximum search
(``wfdb.processing.peaks.find_local_peaks``), a Python loop that takes ~97% of its 7 s on
a 30-minute record: :func:`local_peaks` returns exactly the same indices, vectorised.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from heartcli.data.beats import BEAT_LENGTH, cut_beats
from heartcli.data.mitdb import AAMI_MAP, FS_HZ
from heartcli.data.records import check_record, has_annotations, read_annotations, read_signal
from heartcli.data.rhythm import MIN_BEATS, rows_rhythm
from heartcli.errors import DataError, UsageError

PeaksMode = Literal["auto", "annotations", "detect"]
MATCH_TOLERANCE_S = 0.150  # a detected peak within 150 ms of a reference beat finds it


@dataclass
class RecordSignal:
    """One lead of a record, at 360 Hz, in raw ADC units (float64 after resampling)."""

    path: Path
    signal: np.ndarray
    fs_in: float
    channel: int
    lead: str
    leads: list[str]
    gain: float
    baseline: float
    notes: list[str] = field(default_factory=list)

    @property
    def resampled(self) -> bool:
        return self.fs_in != FS_HZ

    def to_record_samples(self, index: np.ndarray) -> np.ndarray:
        """360 Hz sample indices -> sample indices at the record's own rate."""
        if not self.resampled:
            return np.asarray(index, dtype=np.int64)
        return np.rint(np.asarray(index) * self.fs_in / FS_HZ).astype(np.int64)


@dataclass
class SegmentedRecord:
    """The beats of one record and how they were found."""

    record: str
    x: np.ndarray  # float32 [n, 187]
    sample: np.ndarray  # R-peak index at the record's own rate
    reference: np.ndarray | None  # AAMI class index of each beat, when the .atr labels it
    method: str  # "annotations" or "detected"
    lead: str
    fs_in: float
    notes: list[str]
    detection: dict[str, Any] | None = None  # detected vs reference peaks, when both exist
    rhythm: np.ndarray | None = None  # float32 [n, 9]: the rhythm columns of every beat
    duration_s: float = 0.0  # the record's length in seconds


def read_record(path: str | Path, lead: str = "auto") -> RecordSignal:
    """One lead of a WFDB record (raw ADC units, as `heart fetch` reads it: read and
    checked by :func:`heartcli.data.records.read_signal`), at 360 Hz."""
    path = Path(path)
    rec = read_signal(path, lead)
    signal: np.ndarray = rec.samples
    notes = list(rec.notes)
    if rec.fs != FS_HZ:
        from scipy.signal import resample_poly

        ratio = Fraction(FS_HZ / rec.fs).limit_denominator(1000)
        signal = resample_poly(signal.astype(np.float64), ratio.numerator, ratio.denominator)
        notes.append(f"resampled from {rec.fs:g} Hz to {FS_HZ} Hz (polyphase, anti-aliased)")
    return RecordSignal(
        path, signal, rec.fs, rec.channel, rec.lead, rec.leads, rec.gain, rec.baseline, notes
    )


def read_reference(path: str | Path, fs_in: float) -> tuple[np.ndarray, list[str]] | None:
    """All annotations of ``PATH.atr`` as 360 Hz sample positions and symbols, or None."""
    if not has_annotations(path):
        return None
    samples, symbols = read_annotations(path)
    if fs_in != FS_HZ:
        samples = np.rint(samples * FS_HZ / fs_in).astype(np.int64)
    return samples, symbols


# ------------------------------------------------------------------- R-peak detection


def local_peaks(sig: np.ndarray, radius: int) -> np.ndarray:
    """``wfdb.processing.peaks.find_local_peaks``, vectorised, with identical output.

    wfdb scans ``i`` upwards: ``i`` is a peak when ``sig[i]`` equals the maximum of
    ``sig[i - radius : i + radius]`` (clipped at 0), and the scan then jumps ``radius``.
    The maximum filter gives every candidate at once; the jumps make the choice greedy:
    after a peak at ``p`` the next one is the first candidate at ``>= p + radius``.
    """
    from scipy.ndimage import maximum_filter1d

    sig = np.asarray(sig)
    if len(sig) == 0 or np.min(sig) == np.max(sig):
        return np.empty(0)
    radius = max(int(radius), 1)
    # Even size 2r, origin 0: the window of i is [i - r, i + r - 1], as in wfdb's slice.
    window_max = maximum_filter1d(sig, size=2 * radius, mode="nearest")
    candidates = np.flatnonzero(sig == window_max)
    peaks: list[int] = []
    k = 0
    while k < len(candidates):
        p = int(candidates[k])
        peaks.append(p)
        k = int(np.searchsorted(candidates, p + radius, side="left"))
    return np.array(peaks)


_xqrs_lock = threading.Lock()

# The R-peak detectors `heart predict --peaks detect` offers. gqrs is the default: on the 22
# DS1 records (EC57 rules) it finds more beats than XQRS at a similar +P; see docs/measurements.md.
DETECTORS = ("gqrs", "xqrs")
DETECTOR = "gqrs"
GQRS_SEARCH_S = 0.05  # gqrs marks ~33 ms before the R-peak: moved to it within 50 ms


def gqrs_peaks(signal_mv: np.ndarray, fs: float = FS_HZ) -> np.ndarray:
    """wfdb's gqrs (the port of WFDB's C gqrs), each mark then moved to the signal's
    largest deflection within 50 ms (``wfdb.processing.correct_peaks``, ``compare``: up or
    down from the local mean): gqrs marks the QRS ~12 samples (33 ms) before the R-peak
    where the beats were annotated, and the beat cut starts at the peak."""
    from wfdb.processing import correct_peaks, gqrs_detect

    sig = np.asarray(signal_mv, dtype=np.float64)
    try:
        marks = np.asarray(gqrs_detect(sig=sig, fs=fs), dtype=np.int64)
    except (ValueError, IndexError) as exc:
        raise DataError(f"R-peak detection failed on this signal ({exc})") from None
    if len(marks) == 0:
        return marks
    radius = max(round(GQRS_SEARCH_S * fs), 1)
    moved = correct_peaks(sig, marks, radius, round(0.4 * fs), peak_dir="compare")
    return np.unique(np.asarray(moved, dtype=np.int64))


def detect_r_peaks(
    signal_mv: np.ndarray, fs: float = FS_HZ, detector: str | None = None
) -> np.ndarray:
    """R-peak sample indices by ``detector`` (default :data:`DETECTOR`): wfdb's gqrs with
    its marks moved to the R-peak (:func:`gqrs_peaks`), or wfdb's XQRS with
    :func:`local_peaks` as its peak search."""
    from wfdb.processing import qrs

    detector = detector or DETECTOR
    if detector not in DETECTORS:
        raise UsageError(f"--detector {detector}: use {' or '.join(DETECTORS)}")
    if len(signal_mv) < int(2 * fs):
        raise DataError(
            f"the record is {len(signal_mv) / fs:.1f} s long; R-peak detection needs at least 2 s"
        )
    if detector == "gqrs":
        return gqrs_peaks(signal_mv, fs)
    with _xqrs_lock:
        original = qrs.find_local_peaks
        qrs.find_local_peaks = local_peaks
        try:
            xqrs = qrs.XQRS(sig=np.asarray(signal_mv, dtype=np.float64), fs=fs)
            xqrs.detect(verbose=False)
        except (ValueError, IndexError) as exc:
            raise DataError(f"R-peak detection failed on this signal ({exc})") from None
        finally:
            qrs.find_local_peaks = original
    return np.unique(np.asarray(xqrs.qrs_inds, dtype=np.int64))


def match_peaks(reference: np.ndarray, detected: np.ndarray, tolerance: int) -> np.ndarray:
    """For each reference peak, the index of the nearest detected peak within tolerance, or -1.

    Each detected peak is used at most once (closest pairs first), as in beat-by-beat
    detector scoring.
    """
    reference = np.asarray(reference, dtype=np.int64)
    detected = np.asarray(detected, dtype=np.int64)
    match = np.full(len(reference), -1, dtype=np.int64)
    if len(reference) == 0 or len(detected) == 0:
        return match
    pos = np.searchsorted(detected, reference)
    pairs: list[tuple[int, int, int]] = []
    for cand in (pos - 1, pos):
        ok = (cand >= 0) & (cand < len(detected))
        ref_i = np.flatnonzero(ok)
        det_i = cand[ok]
        dist = np.abs(detected[det_i] - reference[ref_i])
        keep = dist <= tolerance
        pairs += zip(dist[keep].tolist(), ref_i[keep].tolist(), det_i[keep].tolist(), strict=True)
    used: set[int] = set()
    for _, r, d in sorted(pairs):
        if match[r] < 0 and d not in used:
            match[r] = d
            used.add(d)
    return match


# ------------------------------------------------------------------- the whole record


def segment_record(
    path: str | Path,
    *,
    lead: str = "auto",
    peaks: PeaksMode = "auto",
    detector: str | None = None,
) -> SegmentedRecord:
    """Cut a WFDB record (path without extension) into beats by the `heart fetch` recipe."""
    path = check_record(path)
    rec = read_record(path, lead)
    ref = read_reference(path, rec.fs_in) if peaks != "detect" else None
    if peaks == "annotations" and ref is None:
        raise DataError(f"{path}: no {path.name}.atr; use --peaks detect to find the R-peaks")
    notes = list(rec.notes)
    if ref is not None:
        samples, symbols = ref
        x, y, r_peaks = cut_beats(rec.signal, samples, symbols)
        rhythm = _rhythm(samples, symbols, r_peaks, x, notes)
        return SegmentedRecord(
            path.name,
            x,
            rec.to_record_samples(r_peaks),
            y,
            "annotations",
            rec.lead,
            rec.fs_in,
            notes,
            rhythm=rhythm,
            duration_s=len(rec.signal) / FS_HZ,
        )

    signal_mv = (np.asarray(rec.signal, dtype=np.float64) - rec.baseline) / rec.gain
    detected = detect_r_peaks(signal_mv, FS_HZ, detector)
    if len(detected) < 2:
        raise DataError(f"{path}: fewer than 2 R-peaks detected; is this an ECG lead?")
    # The detected peaks are the boundaries and the beats, cut as annotated ones are.
    x, _, r_peaks = cut_beats(rec.signal, detected)
    rhythm = _rhythm(detected, ["N"] * len(detected), r_peaks, x, notes)
    detection: dict[str, Any] | None = None
    reference: np.ndarray | None = None
    full_ref = read_reference(path, rec.fs_in)
    if full_ref is not None:
        detection, reference = _score_detection(full_ref, detected, r_peaks)
    return SegmentedRecord(
        path.name,
        x,
        rec.to_record_samples(r_peaks),
        reference,
        "detected",
        rec.lead,
        rec.fs_in,
        notes,
        detection,
        rhythm,
        len(rec.signal) / FS_HZ,
    )


def _rhythm(
    samples: np.ndarray, symbols: list[str], r_peaks: np.ndarray, x: np.ndarray, notes: list[str]
) -> np.ndarray:
    """The rhythm columns of the beats ``x`` at ``r_peaks`` (360 Hz), as `heart fetch`
    computes them."""
    rhythm, short = rows_rhythm(samples, symbols, r_peaks, FS_HZ, x)
    if short:
        notes.append(
            f"fewer than {MIN_BEATS} beats: no RR intervals, the rhythm features are the "
            "defined stand-ins (intervals 0, ratios 1)"
        )
    return rhythm


def _score_detection(
    ref: tuple[np.ndarray, list[str]], detected: np.ndarray, beat_peaks: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """Detected peaks vs the .atr beats; the reference class of each beat (-1: none matched)."""
    samples, symbols = ref
    is_beat = np.array([s in AAMI_MAP for s in symbols], dtype=bool)
    ref_peaks = samples[is_beat]
    ref_labels = np.array([AAMI_MAP[s] for s, b in zip(symbols, is_beat, strict=True) if b])
    tolerance = round(MATCH_TOLERANCE_S * FS_HZ)
    match = match_peaks(ref_peaks, detected, tolerance)
    found = int((match >= 0).sum())
    label_of_detected = np.full(len(detected), -1, dtype=np.int64)
    label_of_detected[match[match >= 0]] = ref_labels[match >= 0]
    reference = label_of_detected[np.searchsorted(detected, beat_peaks)]
    return (
        {
            "reference_beats": len(ref_peaks),
            "found_within_150ms": found,
            "sensitivity": found / len(ref_peaks) if len(ref_peaks) else 0.0,
            "detected_peaks": len(detected),
            "ppv": found / len(detected) if len(detected) else 0.0,
        },
        reference,
    )


__all__ = [
    "BEAT_LENGTH",
    "RecordSignal",
    "SegmentedRecord",
    "detect_r_peaks",
    "local_peaks",
    "match_peaks",
    "read_record",
    "segment_record",
]
