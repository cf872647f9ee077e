"""ANSI/AAMI EC57 beat-by-beat comparison of two annotation sets, as WFDB's ``bxb`` does it.

Pure numpy and Python: no files, no printing. :mod:`heartcli.evaluate.records` reads the
records and runs the model; this module matches the beats and derives the figures.

What is followed (WFDB 10.7, ``app/bxb.c`` rev. 27 April 2020 and ``app/sumstats.c``,
github.com/bemoody/wfdb):

* **beats**: a reference or test annotation is a beat when its symbol is a beat code;
  reference symbols map to the AAMI classes N, S, V, F, Q as `heart fetch` maps them
  (:data:`heartcli.data.mitdb.AAMI_MAP`). bxb's own ``amap`` differs in one place: it
  counts nodal and atrial escape beats (``j``, ``e``) as S, heart (and de Chazal 2004,
  whose classes heart trains on) as N. Reference annotations between a VF onset ``[`` and
  offset ``]`` are skipped (``getref``), and a test beat inside a reference VF episode is
  not counted (``rpann`` returns ``*``).
* **matching**: bxb's four-case loop with its 2002 amendment: the earlier of the current
  reference beat ``T`` and test beat ``t`` is paired with the other when they lie within
  the match window (150 ms) and no neighbour is a closer partner; otherwise it is an
  unmatched beat (a missed reference beat, or a false test beat).
* **learning period**: beats before ``start`` (default 5 minutes) are not scored. The
  last test beat before ``start`` may still pair with the first reference beat after it,
  and a first test beat within the window after ``start`` that the next one matches
  better is dropped, as in bxb's ``main``. The comparison ends at the record's end.
* **statistics** (bxb's ``print_results``): QRS Se = QTP / (QTP + QFN), +P = QTP /
  (QTP + QFP) with QTP every paired beat of any class; VEB TP = Vv, FN = the rest of the
  V row (missed included), FP = Nv + Sv + Ov (F or Q labelled V is neither right nor
  wrong), TN = the N, S, F, Q and O rows in the columns n, s, f, q; SVEB TP = Ss, FN = the
  rest of the S row, FP = Ns + Vs + Fs + Os (Q labelled S is neither).
* **totals** (``sumstats``): gross = the figures of the pooled counts; average = the mean
  of the records' figures over the records where the figure is defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heartcli.data.mitdb import AAMI_MAP, AAMI_SYMBOLS

CLASSES = AAMI_SYMBOLS
N, S, V, F, Q = range(5)
O = 5  # row: a test beat without reference beat; column: a missed reference beat  # noqa: E741
MATRIX_ROWS = (*CLASSES, "O")
MATRIX_COLUMNS = (*(c.lower() for c in CLASSES), "o")
MATCH_WINDOW_S = 0.150
LEARNING_PERIOD_S = 300.0
PACED_RECORDS = ("102", "104", "107", "217")
VF_ON, VF_OFF = "[", "]"
HUGE = 1 << 62  # bxb's huge_time: no more annotations

STAT_KEYS = ("qrs_se", "qrs_ppv", "veb_se", "veb_ppv", "veb_fpr", "sveb_se", "sveb_ppv")
COUNT_KEYS = (
    "qrs_tp", "qrs_fn", "qrs_fp", "veb_tp", "veb_fn", "veb_fp", "veb_tn",
    "sveb_tp", "sveb_fn", "sveb_fp",
)  # fmt: skip


@dataclass
class BeatAnnotations:
    """The beats of one annotator: sample positions (ascending), AAMI class indices, and
    the VF episodes ``(onset, offset)`` it marks (offset ``HUGE`` when never closed)."""

    sample: np.ndarray
    label: np.ndarray
    vf: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample)


def beats_from(
    samples: Sequence[int] | np.ndarray,
    symbols: Sequence[str],
    mapping: dict[str, int] | None = None,
) -> BeatAnnotations:
    """The beats among WFDB annotations (symbol in ``mapping``, default the AAMI map);
    annotations inside a VF episode (``[`` to ``]``) are skipped, as bxb's getref does."""
    mapping = AAMI_MAP if mapping is None else mapping
    order = np.argsort(np.asarray(samples, dtype=np.int64), kind="stable")
    pos = np.asarray(samples, dtype=np.int64)[order]
    sym = [str(symbols[i]) for i in order]
    keep_s: list[int] = []
    keep_l: list[int] = []
    vf: list[tuple[int, int]] = []
    onset: int | None = None
    for p, s in zip(pos.tolist(), sym, strict=True):
        if onset is not None:
            if s == VF_OFF:
                vf.append((onset, p))
                onset = None
            continue
        if s == VF_ON:
            onset = p
        elif s in mapping:
            keep_s.append(p)
            keep_l.append(mapping[s])
    if onset is not None:
        vf.append((onset, HUGE))
    return BeatAnnotations(
        np.asarray(keep_s, dtype=np.int64), np.asarray(keep_l, dtype=np.int64), vf
    )


@dataclass
class Comparison:
    """One record's beat-by-beat result: the 6 x 6 matrix (rows N S V F Q O: the reference
    class, O for a test beat without reference; columns n s v f q o: the test class, o for
    a missed reference beat) and the RR interval errors bxb tallies."""

    matrix: np.ndarray
    rr_sq_sum: float = 0.0
    rr_count: int = 0

    def counts(self) -> dict[str, int]:
        return counts_of(self.matrix)

    def stats(self) -> dict[str, float | None]:
        return stats_of(self.counts())

    def rr_error(self, fs: float) -> float | None:
        """bxb's RMS RR interval error in milliseconds (None when no pair had both RRs)."""
        if not self.rr_count:
            return None
        return float(np.sqrt(self.rr_sq_sum / self.rr_count) * 1000.0 / fs)


class _Cursor:
    """bxb's getref/gettest over one annotator: the current beat (time, class) and the
    next one, and the RR interval ending at the current beat (0 when undefined)."""

    def __init__(self, beats: BeatAnnotations) -> None:
        self.times = beats.sample.tolist()
        self.labels = beats.label.tolist()
        self.vf = beats.vf
        self.k = -1  # index of the current beat; -1: none yet
        self.rr = 0

    def time(self, k: int) -> int:
        return self.times[k] if 0 <= k < len(self.times) else (HUGE if k >= 0 else 0)

    @property
    def now(self) -> int:
        return self.time(self.k)

    @property
    def next(self) -> int:
        return self.time(self.k + 1)

    @property
    def label(self) -> int:
        return self.labels[self.k]

    def advance(self) -> None:
        before = self.now if self.k >= 0 else 0
        self.k += 1
        after = self.now
        crossed = any(before <= on < after for on, _ in self.vf)
        self.rr = 0 if before == 0 or after == HUGE or crossed else after - before

    def in_vf(self, time: int) -> bool:
        return any(on <= time <= off for on, off in self.vf)


def compare(
    reference: BeatAnnotations,
    test: BeatAnnotations,
    *,
    fs: float,
    start_s: float = LEARNING_PERIOD_S,
    end: int | None = None,
    window_s: float = MATCH_WINDOW_S,
    pairs: list[tuple[int, int, int, int]] | None = None,
) -> Comparison:
    """bxb's comparison of ``test`` against ``reference`` (sample positions at ``fs``):
    beats from ``start_s`` seconds to sample ``end`` (default: the last beat of either).

    ``pairs``, when given, receives every scored beat as ``(reference sample, test sample,
    row, column)`` of the matrix (-1 for the side a missed or false beat lacks)."""
    window = int(window_s * fs + 0.5)  # rounded as WFDB's strtim rounds
    start = int(min(start_s * fs + 0.5, HUGE))  # at most HUGE: the loops below end at it
    if end is None:
        last = [int(b.sample[-1]) for b in (reference, test) if len(b)]
        end = max(last, default=0)
    result = Comparison(np.zeros((6, 6), dtype=np.int64))
    ref, tst = _Cursor(reference), _Cursor(test)

    def pair(row: int | None, column: int) -> None:
        if row is not None:
            result.matrix[row, column] += 1
            if pairs is not None:
                at_ref = -1 if row == O else int(ref.now)
                pairs.append((at_ref, -1 if column == O else int(tst.now), row, column))
        if ref.rr > 0 and tst.rr > 0:
            result.rr_sq_sum += float(ref.rr - tst.rr) ** 2
            result.rr_count += 1

    _skip_learning(ref, tst, start, window, pair)
    while ref.now <= end or tst.now <= end:
        big_t, t = ref.now, tst.now
        if t < big_t:
            if big_t - t <= window and (
                big_t - t < abs(big_t - tst.next)
                or abs(ref.next - tst.next) < abs(big_t - tst.next)
            ):
                pair(ref.label, tst.label)
                ref.advance()
                tst.advance()
            else:
                pair(None if ref.in_vf(t) else O, tst.label)
                tst.advance()
        elif t - big_t <= window and (
            t - big_t < abs(t - ref.next) or abs(tst.next - ref.next) < abs(t - ref.next)
        ):
            pair(ref.label, tst.label)
            tst.advance()
            ref.advance()
        else:
            pair(ref.label, O)
            ref.advance()
    return result


def _skip_learning(ref: _Cursor, tst: _Cursor, start: int, window: int, pair: Any) -> None:
    """bxb's main before its loop: the reference at its first beat at or after ``start``,
    the test at its last beat before it; that beat pairs with the reference beat when it
    is its match, else a first test beat within the window after ``start`` that the next
    test beat matches better is dropped."""
    ref.advance()
    if start <= 0:  # bxb -f 0: both at their first beat, nothing dropped
        tst.advance()
        return
    while ref.now < start:
        ref.advance()
    while tst.next < start:
        tst.advance()
    big_t, t = ref.now, tst.now
    if tst.k >= 0 and big_t - t < abs(big_t - tst.next) and big_t - t <= window:
        pair(ref.label, tst.label)
        ref.advance()
        tst.advance()
    else:
        tst.advance()
        if tst.now - start <= window and abs(big_t - tst.next) < abs(big_t - tst.now):
            tst.advance()


# --------------------------------------------------------------------------- figures


def counts_of(m: np.ndarray) -> dict[str, int]:
    """The counts behind bxb's statistics, from a 6 x 6 matrix."""
    m = np.asarray(m, dtype=np.int64)
    not_v = [N, S, F, Q]
    c = {
        "qrs_tp": m[:5, :5].sum(),
        "qrs_fn": m[:5, O].sum(),
        "qrs_fp": m[O, :5].sum(),
        "veb_tp": m[V, V],
        "veb_fn": m[V, :].sum() - m[V, V],
        "veb_fp": m[N, V] + m[S, V] + m[O, V],
        "veb_tn": m[np.ix_([N, S, F, Q, O], not_v)].sum(),
        "sveb_tp": m[S, S],
        "sveb_fn": m[S, :].sum() - m[S, S],
        "sveb_fp": m[N, S] + m[V, S] + m[F, S] + m[O, S],
    }
    return {k: int(v) for k, v in c.items()}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def stats_of(c: dict[str, int]) -> dict[str, float | None]:
    """Se, +P and FPR from the counts; None where the denominator is 0 (bxb prints -)."""
    return {
        "qrs_se": _ratio(c["qrs_tp"], c["qrs_tp"] + c["qrs_fn"]),
        "qrs_ppv": _ratio(c["qrs_tp"], c["qrs_tp"] + c["qrs_fp"]),
        "veb_se": _ratio(c["veb_tp"], c["veb_tp"] + c["veb_fn"]),
        "veb_ppv": _ratio(c["veb_tp"], c["veb_tp"] + c["veb_fp"]),
        "veb_fpr": _ratio(c["veb_fp"], c["veb_tn"] + c["veb_fp"]),
        "sveb_se": _ratio(c["sveb_tp"], c["sveb_tp"] + c["sveb_fn"]),
        "sveb_ppv": _ratio(c["sveb_tp"], c["sveb_tp"] + c["sveb_fp"]),
    }


def matrix_dict(m: np.ndarray) -> dict[str, dict[str, int]]:
    """The matrix as {reference row: {test column: count}} (O row has no o column)."""
    return {
        row: {
            col: int(m[i, j])
            for j, col in enumerate(MATRIX_COLUMNS)
            if not (row == "O" and col == "o")
        }
        for i, row in enumerate(MATRIX_ROWS)
    }


def record_entry(name: str, comparison: Comparison, fs: float) -> dict[str, Any]:
    """One record's document: the statistics, the counts, the matrix, the RR error."""
    counts = comparison.counts()
    return {
        "record": name,
        **comparison.stats(),
        **counts,
        "rr_error_ms": comparison.rr_error(fs),
        "matrix": matrix_dict(comparison.matrix),
    }


def totals(entries: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """sumstats: ``gross`` (the figures of the pooled counts and matrix) and ``average``
    (each figure's mean over the records where it is defined, with how many those are)."""
    entries = list(entries)
    pooled = np.zeros((6, 6), dtype=np.int64)
    for e in entries:
        pooled += _matrix_array(e["matrix"])
    counts = counts_of(pooled)
    gross: dict[str, Any] = {**stats_of(counts), **counts, "matrix": matrix_dict(pooled)}
    gross["records"] = len(entries)
    average: dict[str, Any] = {}
    for key in (*STAT_KEYS, "rr_error_ms"):
        values = [e[key] for e in entries if e.get(key) is not None]
        average[key] = float(np.mean(values)) if values else None
        average[f"{key}_records"] = len(values)
    average.update(counts)
    average["records"] = len(entries)
    return gross, average


def _matrix_array(d: dict[str, dict[str, int]]) -> np.ndarray:
    m = np.zeros((6, 6), dtype=np.int64)
    for i, row in enumerate(MATRIX_ROWS):
        for j, col in enumerate(MATRIX_COLUMNS):
            m[i, j] = d.get(row, {}).get(col, 0)
    return m


# ------------------------------------------------------------------ bxb's -L line format

BXB_COLUMNS = (
    "Record", "Nn'", "Sn'", "Vn'", "Fn'", "On'", "Ns", "Ss", "Vs", "Fs'", "Os'",
    "Nv", "Sv", "Vv", "Fv'", "Ov'", "No'", "So'", "Vo'", "Fo'",
    "Q Se", "Q +P", "V Se", "V +P", "S Se", "S +P", "RR err", "V FPR",
)  # fmt: skip


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def bxb_line(entry: dict[str, Any]) -> list[str]:
    """One record as bxb -L writes it (condensed columns: n' = n + f + q, Fx' = the F and
    Q rows together, o' = o + x), then bxb -l's V FPR; percentages, - where undefined."""
    m = _matrix_array(entry["matrix"])
    nfq = [N, F, Q]

    def row_n(r: int) -> int:
        return int(m[r, nfq].sum())

    cells = [
        entry["record"],
        row_n(N), row_n(S), row_n(V), row_n(F) + row_n(Q), row_n(O),
        m[N, S], m[S, S], m[V, S], m[F, S] + m[Q, S], m[O, S],
        m[N, V], m[S, V], m[V, V], m[F, V] + m[Q, V], m[O, V],
        m[N, O], m[S, O], m[V, O], m[F, O] + m[Q, O],
    ]  # fmt: skip
    rr = entry.get("rr_error_ms")
    return [
        *(str(c) for c in cells),
        _pct(entry["qrs_se"]),
        _pct(entry["qrs_ppv"]),
        _pct(entry["veb_se"]),
        _pct(entry["veb_ppv"]),
        _pct(entry["sveb_se"]),
        _pct(entry["sveb_ppv"]),
        "-" if rr is None else f"{rr:.2f}",
        _pct(entry["veb_fpr"], 3),
    ]
