"""Rhythm columns of `heart fetch`: RR features checked against intervals computed by hand,
template features against a record's median beat computed by hand.

The hand computation reads the real .atr with wfdb and walks the annotations with plain
Python: keep the AAMI beat symbols, take differences of neighbouring sample positions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import wfdb
from conftest import QUICK_INTER_PATIENT, SAMPLE, Heart, last_line, strata

from heartcli.data.build import collect_beats, rhythm_manifest
from heartcli.data.dataset import RHYTHM_COLUMNS, load_split, read_manifest
from heartcli.data.mitdb import FS_HZ
from heartcli.model.load import load_run

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


# --------------------------------------------- moved here from tests/test_rhythm_model.py


USED = ["rr_pre_local", "rr_post_pre", "rr_pre_record", "rr_local_record", "tpl_decorr"]


@pytest.fixture(scope="module")
def rhythm_run(tmp_path_factory):
    """One tiny rhythm model, validated on 4 whole DS1 records, exported in every format: two
    ratios, two intervals relative to the record's mean RR (computed inside the model), a
    template feature, and the wide path from them to the logits."""
    root = tmp_path_factory.mktemp("rhythm")
    heart = Heart()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        heart(
            "-q", "train", *QUICK_INTER_PATIENT, "--name", "rr", "--set", "model.rhythm=true",
            "--set", "train.val_records=4", "--set", f"model.rhythm_columns={USED}",
            "--set", "model.rhythm_wide=true",
        )  # fmt: skip
        heart("-q", "export", root / "runs" / "rr", "--format", "all", "--out", root / "export")
    return root / "runs" / "rr", root / "export"


@pytest.mark.slow
def test_rhythm_model_statistics_of_the_training_fold(rhythm_run):
    run_dir, _ = rhythm_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    train = load_split(SAMPLE, "inter-patient", "train", classes={"Q": "drop"})
    val_records = manifest["data"]["val_records"]
    assert len(val_records) == 4
    # Whole records, stratified: S and V on both sides of the cut.
    rest = set(np.unique(train.record.astype(str))) - set(val_records)
    assert strata(train, val_records) == strata(train, rest) == {"S", "V"}
    fold = train.rhythm[~np.isin(train.record.astype(str), val_records)]
    stats = manifest["rhythm"]
    assert stats["columns"] == list(RHYTHM_COLUMNS)
    assert stats["used"] == USED and stats["scale_kind"] == "log"
    # The log scale, by hand: median and IQR / 1.349 of the log of each feature.
    pre, _, local, record, pre_local, post_pre, decorr, _, _ = fold.astype(np.float64).T
    used = np.stack([pre_local, post_pre, pre / record, local / record, decorr], axis=1)
    logs = np.log(np.clip(used, 1e-3, None))
    q25, median, q75 = np.quantile(logs, [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(stats["center"], median, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["scale"], (q75 - q25) / 1.349, rtol=1e-5, atol=1e-6)
    # The statistics travel in the weights (model buffers), for evaluate, export, predict.
    model = load_run(run_dir).model
    np.testing.assert_allclose(model.rhythm.center.numpy(), median, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_rhythm_model_evaluates_exports_and_predicts(heart, rhythm_run, mitdb_dir, tmp_path):
    run_dir, export = rhythm_run
    result = heart.json("evaluate", run_dir)
    assert result["n"] == 525  # the sample's DS2 beats without Q

    card = json.loads((export / "model_card.json").read_text())
    assert card["rhythm_input"]["name"] == "rhythm"
    assert card["rhythm_input"]["columns"] == list(RHYTHM_COLUMNS)
    assert {f["file"] for f in card["files"]} == {"model.onnx", "model.pt2", "model.torchscript.pt"}
    assert all(f["parity"]["argmax_disagreements"] == 0 for f in card["files"])
    assert "input `rhythm`: float32 `[batch, 9]`" in (export / "MODEL_CARD.md").read_text()
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == [("beats", 187), ("rhythm", 9)]

    # Record 100 with its .atr: the features come from the annotations, with the code of
    # `heart fetch`, so the sample's rows of record 100 get the same probabilities from
    # the record as from the dataset file's own rhythm columns.
    by_record = tmp_path / "by_record.parquet"
    annotated = heart.json("predict", export / "model.onnx", mitdb_dir / "100", "--out", by_record)
    assert annotated["segmentation"] == "annotations" and annotated["beats"] == 2272
    test_file = SAMPLE / "inter-patient" / "test.parquet"
    by_file = tmp_path / "by_file.parquet"
    heart.json("predict", export / "model.onnx", test_file, "--out", by_file)
    rec, fil = pq.read_table(by_record).to_pandas(), pq.read_table(by_file).to_pandas()
    fil = fil[fil["record"] == "100"]
    assert len(fil) > 0
    joined = fil.merge(rec, on="sample", suffixes=("_file", "_record"))
    assert len(joined) == len(fil)
    for c in ("N", "S", "V", "F"):
        np.testing.assert_allclose(joined[f"p_{c}_file"], joined[f"p_{c}_record"], atol=1e-5)

    # Without the .atr: R-peaks detected, features from them; the run and its ONNX agree.
    bare = tmp_path / "bare"
    bare.mkdir()
    for ext in ("dat", "hea"):
        shutil.copy(mitdb_dir / f"100.{ext}", bare / f"100.{ext}")
    onnx_out = heart.json("predict", export / "model.onnx", bare / "100")
    torch_out = heart.json("predict", run_dir, bare / "100")
    assert onnx_out["segmentation"] == torch_out["segmentation"] == "detected"
    assert onnx_out["agreement"] is None
    assert abs(onnx_out["beats"] - 2272) < 30
    assert onnx_out["counts"] == torch_out["counts"]


@pytest.mark.slow
def test_rhythm_model_refuses_beats_without_rhythm_columns(heart, rhythm_run, tmp_path):
    run_dir, export = rhythm_run
    table = pq.read_table(SAMPLE / "inter-patient" / "test.parquet")
    bare = tmp_path / "no_rhythm.parquet"
    pq.write_table(table.drop_columns(list(RHYTHM_COLUMNS)), bare)
    partial = tmp_path / "partial.parquet"
    pq.write_table(table.drop_columns(["rr_local"]), partial)
    for model in (run_dir, export / "model.onnx"):
        result = heart("predict", model, bare, expect=2)
        line = last_line(result.stderr)
        assert line.startswith("error: ") and "rr_pre, rr_post" in line and "heart fetch" in line
        line = last_line(heart("predict", model, partial, expect=2).stderr)
        assert "no columns rr_local;" in line
    assert "Traceback" not in result.stderr


def test_rhythm_needs_a_dataset_with_rhythm_columns(heart, tmp_path, sample_dir):
    # A Kaggle CSV import has no beat timing, so no rhythm columns.
    imported = tmp_path / "kaggle"
    for part in ("train", "test"):
        beats = load_split(sample_dir, "random", part)
        data = np.hstack([beats.x.astype(np.float64), beats.y[:, None].astype(np.float64)])
        np.savetxt(tmp_path / f"mitbih_{part}.csv", data, delimiter=",", fmt="%.18e")
    heart(
        "-q", "fetch", "--import", tmp_path / "mitbih_train.csv", tmp_path / "mitbih_test.csv",
        "--out", imported,
    )  # fmt: skip
    result = heart(
        "train", *QUICK_INTER_PATIENT, "--set", f"data.dir={imported}",
        "--set", "data.split=mitbih", "--set", "model.rhythm=true", expect=2,
    )  # fmt: skip
    line = last_line(result.stderr)
    assert line.startswith("error: model.rhythm = true:")
    assert "rr_pre, rr_post, rr_local, rr_record, rr_pre_local, rr_post_pre" in line
    assert "`heart fetch`" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
