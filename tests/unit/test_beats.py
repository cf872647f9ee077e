"""The beat recipe itself, on real records, against plain-numpy slicing done by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from heartcli.data.beats import record_beats, segment_beats
from heartcli.data.build import collect_beats
from heartcli.data.mitdb import AAMI_MAP
from heartcli.data.records import read_annotations, read_signal
from heartcli.errors import DataError


def slow_recipe(signal: np.ndarray, samples: np.ndarray, symbols: list[str]):
    """The recipe as a loop over annotations, one beat at a time."""
    xs, ys, peaks = [], [], []
    for i in range(len(samples) - 1):
        if symbols[i] not in AAMI_MAP:
            continue
        r0, r1 = samples[i], samples[i + 1]
        r2 = samples[i + 2] if i + 2 < len(samples) else len(signal)
        seg = signal[r0 : r1 + (r2 - r1) // 5 : 3].astype(np.float64)
        seg = (seg - seg.min()) / (seg.max() - seg.min())
        beat = np.zeros(187, np.float32)
        beat[: min(187, len(seg))] = seg[:187].astype(np.float32)
        xs.append(beat)
        ys.append(AAMI_MAP[symbols[i]])
        peaks.append(r0)
    return np.array(xs), np.array(ys), np.array(peaks)


@pytest.mark.parametrize("record", ["100", "207", "217"])
def test_vectorised_recipe_equals_the_loop(mitdb_dir: Path, record: str):
    # 207 has long non-beat stretches ([ ! ] flutter markers), 217 paced and fusion beats.
    signal = wfdb.rdrecord(str(mitdb_dir / record), physical=False).d_signal[:, 0]
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    want = slow_recipe(signal, ann.sample, ann.symbol)
    got = record_beats(mitdb_dir / record)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_non_beat_annotations_are_boundaries(mitdb_dir: Path):
    signal = read_signal(mitdb_dir / "100").samples
    samples, symbols = read_annotations(mitdb_dir / "100")
    assert symbols[0] == "+"  # a rhythm annotation opens the record
    x, _, peaks = segment_beats(signal, samples, symbols)
    assert samples[0] not in peaks
    # The first beat's segment ends 20% of the way from the 2nd to the 3rd annotation.
    r0, r1, r2 = samples[1:4]
    seg = signal[r0 : r1 + (r2 - r1) // 5 : 3].astype(np.float64)
    short = len(seg)
    assert short < 187
    np.testing.assert_array_equal(x[0, short:], 0.0)  # zero padded
    assert x[0].max() == 1.0 and x[0, :short].min() == 0.0


def test_mlii_lead_skips_records_without_it(mitdb_dir: Path):
    beats, skipped, short = collect_beats(mitdb_dir, ["100", "102", "114"], lead="MLII")
    assert short == []
    assert skipped == ["102"]
    # 114 has MLII as its second channel: the MLII build reads that one.
    header = wfdb.rdheader(str(mitdb_dir / "114"))
    assert header.sig_name.index("MLII") == 1
    channel0 = record_beats(mitdb_dir / "114")[0]
    mlii = beats.x[beats.record == "114"]
    assert mlii.shape == channel0.shape
    assert not np.array_equal(mlii, channel0)


def test_unreadable_record_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read the record header"):
        read_signal(tmp_path / "999")
