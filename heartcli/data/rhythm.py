"""Rhythm features of every beat: RR intervals from the record's beat annotations.

The inter-patient literature (de Chazal 2004, Lin & Yang 2014, Mondéjar-Guerra 2019)
marks a supraventricular beat by its timing, not its shape: it comes early. These columns
give every dataset row that timing, in seconds (float32), computed from the R-peak sample
positions of the record's **beat** annotations only: the symbols of the AAMI map
(N L R e j A a J S V E F / f Q). Non-beat annotations (rhythm changes ``+``, noise ``~``,
flutter waves ``!``, comments ``"``, non-conducted P waves ``x``, artefacts ``|``,
``[`` ``]``) are no beats and are skipped, so they never shorten an interval. With
``t[i]`` the i-th beat's sample divided by the sampling rate and ``n`` beats:

* ``rr_pre[i] = t[i] - t[i-1]``; the first beat takes ``rr_post[0]`` (its nearest interval).
* ``rr_post[i] = t[i+1] - t[i]``; the last beat takes ``rr_pre[n-1]``.
* ``rr_local[i]`` = mean of the (up to) 10 ``rr_pre`` of the beats before beat i, not
  counting its own; the first beat takes its own ``rr_pre``.
* ``rr_record`` = the record's mean RR interval, ``(t[n-1] - t[0]) / (n - 1)``, the
  same for every beat of the record (the whole record, not a 5-minute window).
* ``rr_pre_local = rr_pre / rr_local`` and ``rr_post_pre = rr_post / rr_pre`` (1 where
  the denominator is 0: two annotations on one sample).

The three template columns that follow (``tpl_decorr``, ``tpl_rms``, ``tpl_peak``) compare
each beat's shape with the record's median beat; see :mod:`heartcli.data.template`.

A record with fewer than 3 beats has no rhythm to speak of: every interval is 0 and both
ratios are 1 (defined, never NaN), and the dataset manifest names the record.
"""

from __future__ import annotations

import numpy as np

from heartcli.data.dataset import RHYTHM_COLUMNS
from heartcli.data.mitdb import AAMI_MAP
from heartcli.data.template import DEFINITIONS as TEMPLATE_DEFINITIONS
from heartcli.data.template import template_features

LOCAL_BEATS = 10
MIN_BEATS = 3
RR_COLUMNS = 6  # the first six rhythm columns; the template columns follow
DEFINITIONS = {
    "rr_pre": "seconds from the previous beat's R-peak to this one; first beat: rr_post",
    "rr_post": "seconds from this R-peak to the next beat's; last beat: rr_pre",
    "rr_local": f"mean rr_pre of the {LOCAL_BEATS} beats before this one (fewer at the start; "
    "first beat: its own rr_pre)",
    "rr_record": "mean RR interval of the whole record: (t_last - t_first) / (beats - 1)",
    "rr_pre_local": "rr_pre / rr_local (1 where rr_local is 0)",
    "rr_post_pre": "rr_post / rr_pre (1 where rr_pre is 0)",
    **TEMPLATE_DEFINITIONS,
}


def beat_times(samples: np.ndarray, symbols: list[str] | np.ndarray) -> np.ndarray:
    """Sample positions of the beat annotations (AAMI beat symbols) only, in order."""
    is_beat = np.fromiter((s in AAMI_MAP for s in symbols), dtype=bool, count=len(symbols))
    return np.asarray(samples, dtype=np.int64)[is_beat]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.ones_like(num), where=den > 0)


def rr_features(beat_samples: np.ndarray, fs: float) -> np.ndarray:
    """float32 [n, 6] (the RR columns, ``RHYTHM_COLUMNS[:6]``) for beats at
    ``beat_samples`` (sorted)."""
    n = len(beat_samples)
    out = np.zeros((n, RR_COLUMNS), dtype=np.float64)
    if n < MIN_BEATS:
        out[:, 4:] = 1.0
        return out.astype(np.float32)
    t = np.asarray(beat_samples, dtype=np.float64) / fs
    rr = np.diff(t)  # rr[i] = t[i+1] - t[i]
    pre = np.concatenate([rr[:1], rr])
    post = np.concatenate([rr, rr[-1:]])
    # Mean of pre[i-10 .. i-1] via a cumulative sum; beat 0 uses its own pre.
    csum = np.concatenate([[0.0], np.cumsum(pre)])
    i = np.arange(n)
    lo = np.maximum(0, i - LOCAL_BEATS)
    count = i - lo
    local = np.where(count > 0, (csum[i] - csum[lo]) / np.maximum(count, 1), pre)
    out[:, 0], out[:, 1], out[:, 2] = pre, post, local
    out[:, 3] = (t[-1] - t[0]) / (n - 1)
    out[:, 4] = _ratio(pre, local)
    out[:, 5] = _ratio(post, pre)
    return out.astype(np.float32)


def rows_rhythm(
    samples: np.ndarray,
    symbols: list[str] | np.ndarray,
    row_samples: np.ndarray,
    fs: float,
    rows: np.ndarray,
) -> tuple[np.ndarray, bool]:
    """The rhythm columns of a record's dataset rows ``rows`` (its beats, cut at
    ``row_samples``): the RR features, then the template features of
    :mod:`heartcli.data.template` against the median of ``rows``.

    Returns ``(float32 [len(row_samples), 9], short)``; ``short`` is True when the record
    has fewer than 3 beats.
    """
    beats = beat_times(samples, symbols)
    if len(beats) == 0:
        rr = np.zeros((len(row_samples), RR_COLUMNS), dtype=np.float32)
        rr[:, 4:] = 1.0
    else:
        at = np.clip(np.searchsorted(beats, row_samples), 0, len(beats) - 1)
        rr = rr_features(beats, fs)[at]
    features = np.concatenate([rr, template_features(rows)], axis=1)
    assert features.shape[1] == len(RHYTHM_COLUMNS)
    return features, len(beats) < MIN_BEATS
