"""Rhythm columns of `heart fetch`: RR features checked against intervals computed by hand,
template features against a record's median beat computed by hand.

The hand computation reads the real .atr with wfdb and walks the annotations with plain
Python: keep the AAMI beat symbols, take differences of neighbouring sample positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb

from heartcli.data.build import collect_beats, rhythm_manifest
from heartcli.data.dataset import RHYTHM_COLUMNS, load_split, read_manifest
from heartcli.data.mitdb import FS_HZ

BEAT_SYMBOLS = set("NLRejAaJSVEF/fQ")
COLUMNS = ["rr_pre", "rr_post", "rr_local", "rr_record", "rr_pre_local", "rr_post_pre"]
TEMPLATE = ["tpl_decorr", "tpl_rms", "tpl_peak"]
ALL = COLUMNS + TEMPLATE


@pytest.fixture(scope="module")
def built(mitbih_build):
    """`heart fetch --source <mitdb> --out DIR`: conftest's one build of the session."""
    return mitbih_build.dir, mitbih_build.summary


@pytest.fixture(scope="module")
def all_beats(built):
    """Both parts of the random split: every beat of the 48 records, as one lookup."""
    return [load_split(built[0], "random", part) for part in ("train", "test")]


def row_of(parts, record: str, sample: int) -> np.ndarray:
    found = []
    for beats in parts:
        hit = np.flatnonzero((beats.record == record) & (beats.sample == sample))
        found += [beats.rhythm[i] for i in hit]
    assert len(found) == 1, (record, sample, len(found))
    return found[0]


def by_hand(mitdb_dir: Path, record: str, k: int) -> tuple[int, dict[str, float]]:
    """The k-th beat annotation of ``record`` (negative: from the end) and its features."""
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    beats = [int(s) for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
    n = len(beats)
    k = k % n
    t = [s / 360.0 for s in beats]

    def pre(i: int) -> float:
        return t[i] - t[i - 1] if i > 0 else t[1] - t[0]

    def post(i: int) -> float:
        return t[i + 1] - t[i] if i < n - 1 else t[i] - t[i - 1]

    before = [pre(j) for j in range(max(0, k - 10), k)]
    local = sum(before) / len(before) if before else pre(k)
    features = {
        "rr_pre": pre(k),
        "rr_post": post(k),
        "rr_local": local,
        "rr_record": (t[-1] - t[0]) / (n - 1),
        "rr_pre_local": pre(k) / local,
        "rr_post_pre": post(k) / pre(k),
    }
    return beats[k], features


@pytest.mark.parametrize(
    ("record", "k", "what"),
    [
        ("100", 0, "first beat of a record: rr_pre is its next interval"),
        ("100", 1, "second beat: rr_local averages one interval"),
        ("100", 57, "a beat in the middle: ten intervals before it"),
        ("232", -2, "the last row of 232 (its last beat is the record's last annotation)"),
        ("208", 300, "a beat of a record full of V beats"),
    ],
)
def test_features_equal_intervals_computed_by_hand(all_beats, mitdb_dir, record, k, what):
    sample, expected = by_hand(mitdb_dir, record, k)
    got = row_of(all_beats, record, sample)
    assert got.dtype == np.float32
    for i, name in enumerate(COLUMNS):
        assert got[i] == pytest.approx(expected[name], rel=1e-6), (what, name)


def test_non_beat_annotations_do_not_count(all_beats, mitdb_dir):
    # Record 232, annotations 223-225: A (81192), ~ noise (81335), A (81446). The interval
    # before the second A runs from the first A, not from the noise mark.
    ann = wfdb.rdann(str(mitdb_dir / "232"), "atr")
    assert ann.symbol[223:226] == ["A", "~", "A"]
    got = row_of(all_beats, "232", int(ann.sample[225]))
    assert got[0] == pytest.approx((81446 - 81192) / 360.0, rel=1e-6)
    before = row_of(all_beats, "232", int(ann.sample[223]))
    assert before[1] == pytest.approx((81446 - 81192) / 360.0, rel=1e-6)


def test_last_beat_of_a_record_takes_its_previous_interval(mitdb_dir):
    # The last annotation of a record is no dataset row, so check the last beat of record
    # 100 through the build function itself, which computes every beat's features.
    from heartcli.data.rhythm import beat_times, rr_features

    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    beats = beat_times(np.asarray(ann.sample), ann.symbol)
    features = rr_features(beats, FS_HZ)
    _, expected = by_hand(mitdb_dir, "100", -1)
    assert features[-1][1] == features[-1][0]  # rr_post = rr_pre
    for i, name in enumerate(COLUMNS):
        assert features[-1][i] == pytest.approx(expected[name], rel=1e-6), name
    assert np.isfinite(features).all()


def test_every_row_has_finite_features_and_the_manifest_lists_them(built):
    out, result = built
    assert result["status"] == "built"
    manifest = read_manifest(out)
    rhythm = manifest["rhythm"]
    assert rhythm["columns"] == ALL == list(RHYTHM_COLUMNS)
    assert set(rhythm["definitions"]) == set(ALL)
    assert rhythm["records_too_short"] == []
    for split in ("random", "inter-patient"):
        for part in ("train", "test"):
            table = pq.read_table(out / split / f"{part}.parquet")
            names = table.column_names
            assert names[:187] == [str(i) for i in range(187)]
            assert names[-9:] == ALL
            for name in ALL:
                values = table.column(name).to_numpy()
                assert values.dtype == np.float32
                assert np.isfinite(values).all()
                assert (values > 0).all() if name in COLUMNS else (values >= 0).all(), name


def test_bundled_sample_carries_the_columns(sample_dir):
    beats = load_split(sample_dir, "inter-patient", "test")
    assert beats.rhythm is not None and beats.rhythm.shape == (len(beats), 9)
    assert read_manifest(sample_dir)["rhythm"]["columns"] == ALL


def test_a_record_with_fewer_than_three_beats(mitdb_dir, tmp_path):
    # The first second of record 100, real signal and real annotations: "+" at 18, beats at
    # 77 and 370. One row (the last annotation is no row), two beats: no rhythm to measure.
    record = wfdb.rdrecord(str(mitdb_dir / "100"), physical=False, sampto=1000)
    record.wrsamp(write_dir=str(tmp_path))
    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr", sampto=400)
    assert list(ann.symbol) == ["+", "N", "N"]
    wfdb.wrann("100", "atr", ann.sample, ann.symbol, write_dir=str(tmp_path))
    beats, skipped, short = collect_beats(tmp_path, ["100"])
    assert skipped == [] and short == ["100"]
    assert len(beats) == 1
    # One beat is its own template: no difference from it.
    np.testing.assert_array_equal(beats.rhythm, [[0, 0, 0, 0, 1, 1, 0, 0, 0]])
    note = rhythm_manifest(short)
    assert note["records_too_short"] == ["100"]
    assert "100" in note["note"] and "fewer than 3 beats" in note["note"]


def test_template_features_against_the_records_median_beat_by_hand(all_beats):
    # Record 208 (N and many V beats): every row of the record, both parts of the random
    # split; the template is the per-sample median of their first 48 samples.
    rows = [(b.x[b.record == "208"], b.rhythm[b.record == "208"], b.y[b.record == "208"])
            for b in all_beats]  # fmt: skip
    x = np.concatenate([r[0] for r in rows]).astype(np.float64)[:, :48]
    got = np.concatenate([r[1] for r in rows])[:, 6:]
    y = np.concatenate([r[2] for r in rows])
    template = np.percentile(x, 50, axis=0)
    for i in (0, 100, int(np.flatnonzero(y == 2)[0])):  # two beats, and the first V beat
        r = np.corrcoef(x[i], template)[0, 1]
        diff = x[i] - template
        expected = [1 - r, np.sqrt(np.mean(diff**2)), np.max(np.abs(diff))]
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
    # What they are for: this patient's V beats are far from his usual beat, his N beats not.
    n, v = y == 0, y == 2
    assert np.median(got[v, 0]) > 3 * np.median(got[n, 0])
