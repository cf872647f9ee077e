"""`heart predict` through the CLI: beat files, record 100 with and without its .atr, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import (
    SAMPLE,
    Exported,
    copy_record,
    cut_record,
    error_line,
    quick_args,
    record_at_250_hz,
)

from heartcli.data.beats import record_beats
from heartcli.data.mitdb import AAMI_MAP
from heartcli.predict.segment import local_peaks, match_peaks

TEST_BEATS = SAMPLE / "random" / "test.parquet"


@pytest.fixture
def tiny(exported: Exported) -> Exported:
    """The session's trained run, evaluated and exported in every format (conftest)."""
    return exported


def test_predict_beat_file_with_run_and_onnx_agree(heart, tiny, tmp_path):
    by_run = heart.json("predict", tiny.run, TEST_BEATS, "--out", tmp_path / "run.csv")
    by_onnx = heart.json(
        "predict", tiny.export / "model.onnx", TEST_BEATS, "--out", tmp_path / "o.parquet"
    )
    assert by_run["model_kind"] == "run" and by_onnx["model_kind"] == "onnx"
    assert by_run["beats"] == by_onnx["beats"] == 615
    assert by_run["counts"] == by_onnx["counts"]
    agreement = by_onnx["agreement"]  # the file's labels are the reference
    assert agreement["beats"] == 615
    assert {c: v["support"] for c, v in agreement["per_class"].items()} == {
        "N": 250, "S": 90, "V": 110, "F": 75, "Q": 90,
    }  # fmt: skip
    a = pacsv.read_csv(tmp_path / "run.csv")
    b = pq.read_table(tmp_path / "o.parquet")
    assert a.column_names == b.column_names == [
        "record", "sample", "predicted", "reference", "p_N", "p_S", "p_V", "p_F", "p_Q",
    ]  # fmt: skip
    pa_ = np.stack([a.column(f"p_{c}").to_numpy() for c in "NSVFQ"], axis=1)
    pb = np.stack([b.column(f"p_{c}").to_numpy() for c in "NSVFQ"], axis=1)
    assert np.abs(pa_ - pb).max() <= 1e-4
    expected = pq.read_table(TEST_BEATS, columns=["record", "sample"])
    assert b.column("record").to_pylist() == expected.column("record").to_pylist()
    assert b.column("sample").to_pylist() == expected.column("sample").to_pylist()
    # The rich table: the per-class agreement
    shown = heart("predict", tiny.export / "model.onnx", TEST_BEATS, "--rows", "3").stdout
    assert "first 3 of 615 beats" in shown and "sensitivity (Se)" in shown


def test_predict_record_100_with_annotations_is_the_fetch_recipe(heart, tiny, tmp_path, mitdb_dir):
    record = copy_record(mitdb_dir, tmp_path / "rec")
    s = heart.json("predict", tiny.export / "model.onnx", record, "--out", tmp_path / "p.json")
    x, y, r_peak = record_beats(record)  # exactly the rows heart fetch makes of record 100
    assert s["segmentation"] == "annotations" and s["lead"] == "MLII"
    assert s["beats"] == len(x) == 2272
    per_class = s["agreement"]["per_class"]
    assert [per_class[c]["support"] for c in "NSVFQ"] == np.bincount(y, minlength=5).tolist()
    assert s["detection"] is None
    written = json.loads((tmp_path / "p.json").read_text())
    assert [b["sample"] for b in written["beats"]] == r_peak.tolist()
    assert written["summary"]["counts"] == s["counts"]
    # The same beats as a beats file give the same predictions.
    from heartcli.predict.load import load_model

    proba = load_model(tiny.export / "model.onnx").proba([x])
    assert [b["predicted"] for b in written["beats"]] == ["NSVFQ"[i] for i in proba.argmax(1)]


def test_predict_record_100_without_annotations_detects_r_peaks(heart, tiny, tmp_path, mitdb_dir):
    record = copy_record(mitdb_dir, tmp_path / "rec", atr=False)
    s = heart.json("predict", tiny.export / "model.onnx", record, "--out", tmp_path / "p.csv")
    assert s["segmentation"] == "detected" and s["agreement"] is None
    samples = pacsv.read_csv(tmp_path / "p.csv").column("sample").to_numpy()
    assert s["beats"] == len(samples)
    # Score the detected beats against the reference beats of the real .atr.
    import wfdb

    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr")
    ref = np.array([p for p, sym in zip(ann.sample, ann.symbol, strict=True) if sym in AAMI_MAP])
    found = int((match_peaks(ref, samples, tolerance=54) >= 0).sum())  # 150 ms at 360 Hz
    print(f"record 100: {found} of {len(ref)} reference beats found within 150 ms")
    # One beat fewer than peaks: the last peak has no next boundary (the recipe's rule).
    assert found >= 0.99 * len(ref) - 1 and len(samples) <= len(ref) + 5


def test_detect_mode_with_annotations_scores_the_detector(heart, tiny, tmp_path, mitdb_dir):
    record = copy_record(mitdb_dir, tmp_path / "rec")
    s = heart.json("predict", tiny.export / "model.onnx", record, "--peaks", "detect")
    det = s["detection"]
    assert s["segmentation"] == "detected" and det["reference_beats"] == 2273
    assert det["sensitivity"] >= 0.99 and det["ppv"] >= 0.99
    assert s["agreement"]["beats"] >= 0.99 * 2272
    shown = heart("predict", tiny.export / "model.onnx", record, "--peaks", "detect").stdout
    assert "reference beats found within 150 ms" in shown


def test_record_at_250_hz_is_resampled(heart, tiny, tmp_path, mitdb_dir):
    """Record 100's first 5 minutes written at 250 Hz: beats found at the same places."""
    import wfdb

    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr", sampto=108000)
    folder = tmp_path / "slow"
    record_at_250_hz(mitdb_dir, folder, 108000)
    slow_s = heart.json("predict", tiny.export / "model.onnx", folder / "slow")
    assert any("resampled from 250 Hz to 360 Hz" in n for n in slow_s["notes"])
    from heartcli.data.beats import segment_beats
    from heartcli.data.records import read_signal

    at_360, _, _ = segment_beats(
        read_signal(mitdb_dir / "100").samples[:108000], ann.sample, ann.symbol
    )
    assert slow_s["beats"] == len(at_360)
    assert slow_s["agreement"]["accuracy"] >= 0.9


def test_annotated_and_detected_peaks_cut_one_beat(heart, trained_run, tmp_path, mitdb_dir):
    """One beat cut for both kinds of R-peaks: the .atr's non-beat annotations (rhythm
    changes, noise, artefacts: 26 in record 203's first 8 minutes) cut no beat, so a beat
    whose R-peak and next two R-peaks are the same whether the .atr or the detector found
    them is the same beat, with the same probabilities."""
    import wfdb

    record = cut_record(mitdb_dir, tmp_path / "rec", "203", minutes=8)
    atr = wfdb.rdann(str(record), "atr")
    is_beat = np.array([s in AAMI_MAP for s in atr.symbol])
    assert (~is_beat).sum() == 26
    beats_only = tmp_path / "beats" / "203"
    cut_record(mitdb_dir, beats_only.parent, "203", minutes=8)
    wfdb.wrann("203", "atr", atr.sample[is_beat], symbol=list(np.array(atr.symbol)[is_beat]),
               write_dir=str(beats_only.parent))  # fmt: skip
    for name, rec in (("all", record), ("beats", beats_only)):
        heart("-q", "predict", trained_run, rec, "--peaks", "annotations",
              "--out", tmp_path / f"{name}.csv")  # fmt: skip
    every, only = (pacsv.read_csv(tmp_path / f"{n}.csv") for n in ("all", "beats"))
    assert every.equals(only)  # the same beats and probabilities, annotations or not

    # Detected peaks: record 213, where the detector lands on most annotated R-peaks exactly.
    record = cut_record(mitdb_dir, tmp_path / "rec", "213", minutes=8)
    for peaks in ("annotations", "detect"):
        heart("-q", "predict", trained_run, record, "--peaks", peaks,
              "--out", tmp_path / f"{peaks}.csv")  # fmt: skip
    ann, det = (
        pacsv.read_csv(tmp_path / f"{p}.csv").to_pydict() for p in ("annotations", "detect")
    )
    atr = wfdb.rdann(str(record), "atr")
    beats = np.array([x for x, s in zip(atr.sample, atr.symbol, strict=True) if s in AAMI_MAP])
    others = np.array([x for x, s in zip(atr.sample, atr.symbol, strict=True) if s not in AAMI_MAP])
    peaks = np.array(det["sample"] + [10**9, 10**9])  # the last peaks cut no beat of their own
    where = {int(x): i for i, x in enumerate(det["sample"])}
    same, crossed = 0, 0
    for j, x in enumerate(ann["sample"]):
        k, i = int(np.searchsorted(beats, x)), where.get(int(x))
        if (
            i is None
            or k + 2 >= len(beats)
            or list(peaks[i + 1 : i + 3]) != list(beats[k + 1 : k + 3])
        ):
            continue  # another boundary: another beat
        same += 1
        crossed += bool(((others > x) & (others <= beats[k + 2])).any())
        assert [ann[f"p_{c}"][j] for c in "NSVFQ"] == [det[f"p_{c}"][i] for c in "NSVFQ"], x
    assert same > 300 and crossed >= 1


def test_local_peaks_is_wfdbs_find_local_peaks(mitdb_dir):
    import wfdb
    from wfdb.processing.peaks import find_local_peaks

    sig = wfdb.rdrecord(str(mitdb_dir / "100"), sampto=60000, channels=[0]).p_signal[:, 0]
    for radius in (5, 18, 36):
        assert np.array_equal(local_peaks(sig, radius), find_local_peaks(sig, radius))


# --------------------------------------------------------------------------- bad input


def _error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unlabelled_beat_files_are_predicted(heart, tiny, tmp_path):
    """New beats have no labels: a parquet without "target", a CSV of 187 columns."""
    onnx_model = tiny.export / "model.onnx"
    table = pq.read_table(TEST_BEATS)
    beats = table.select([str(i) for i in range(187)])
    pq.write_table(beats, tmp_path / "new.parquet")
    pacsv.write_csv(beats, tmp_path / "new.csv", pacsv.WriteOptions(include_header=False))
    labelled = heart.json("predict", onnx_model, TEST_BEATS, "--out", tmp_path / "l.parquet")
    for name in ("new.parquet", "new.csv"):
        s = heart.json("predict", onnx_model, tmp_path / name, "--out", tmp_path / f"{name}.csv")
        assert s["beats"] == 615 and s["agreement"] is None
        assert s["counts"] == labelled["counts"]
        assert s["notes"] == ["no labels in the file: predictions only"]
        out = pacsv.read_csv(tmp_path / f"{name}.csv")
        assert "reference" not in out.column_names
        assert out.column("predicted").to_pylist() == (
            pq.read_table(tmp_path / "l.parquet").column("predicted").to_pylist()
        )


def test_bad_beat_files(heart, tiny, tmp_path):
    onnx_model = tiny.export / "model.onnx"
    table = pq.read_table(TEST_BEATS)
    short = table.select([str(i) for i in range(100)] + ["target"])
    pq.write_table(short, tmp_path / "short.parquet")
    r = heart("predict", onnx_model, tmp_path / "short.parquet", expect=1)
    assert _error(r) == (
        f'error: {tmp_path / "short.parquet"}: expected 187 beat columns "0".."186" '
        '(and optionally "target"), got 100 beat columns'
    )
    (tmp_path / "ragged.csv").write_text("0.5," * 186 + "0.5\n" + "0.5," * 99 + "0.5\n")
    r = heart("predict", onnx_model, tmp_path / "ragged.csv", expect=1)
    assert _error(r) == (
        f"error: {tmp_path / 'ragged.csv'}: line 2 has 100 columns, expected 187 or 188 "
        "(187 values, optionally the label)"
    )
    values = table.column("5").to_numpy().copy()
    values[3] = np.nan
    pq.write_table(table.set_column(5, "5", pa.array(values)), tmp_path / "nan.parquet")
    r = heart("predict", onnx_model, tmp_path / "nan.parquet", expect=1)
    assert _error(r) == (
        f'error: {tmp_path / "nan.parquet"}: row 3, column "5": nan is not a finite number; '
        "drop or repair the row"
    )
    (tmp_path / "beats.txt").write_text("1,2,3\n")
    r = heart("predict", onnx_model, tmp_path / "beats.txt", expect=2)
    assert _error(r) == (
        f"error: {tmp_path / 'beats.txt'}: unknown input type .txt; give beats as .csv or "
        ".parquet, or a WFDB record path without extension (e.g. data/mitdb/100)"
    )
    r = heart("predict", onnx_model, TEST_BEATS, "--out", tmp_path / "p.xlsx", expect=2)
    assert _error(r) == (
        f"error: --out {tmp_path / 'p.xlsx'}: unknown output type; "
        "name a .csv, .parquet or .json file"
    )


def test_record_without_mlii_lead(heart, tiny, tmp_path, mitdb_dir):
    record = copy_record(mitdb_dir, tmp_path / "rec", name="102")
    r = heart("predict", tiny.export / "model.onnx", record, "--lead", "MLII", expect=1)
    assert _error(r) == (
        f"error: {record}: record has no MLII lead (leads: V5, V2); "
        "pass --lead channel0 to use another lead"
    )
    # auto: channel 0, as the Kaggle recipe did for this record, and said so
    s = heart.json("predict", tiny.export / "model.onnx", record, "--rows", "0")
    assert s["lead"] == "V5" and "102 has no MLII lead" in s["notes"][0]


def test_truncated_onnx_and_mismatching_card(heart, tiny, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny.export, folder)
    model = folder / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    r = heart("predict", model, TEST_BEATS, expect=1)
    assert _error(r) == (
        f"error: {model}: not a loadable ONNX model (truncated or damaged); export it again"
    )
    shutil.copy(folder / "model.int8.onnx", model)  # a valid model, but not the card's
    r = heart("predict", model, TEST_BEATS, expect=1)
    assert _error(r) == (
        f"error: model.onnx does not match {folder / 'model_card.json'} (SHA-256 differs); "
        "use the files of one export together, or export again"
    )
    shutil.copy(tiny.export / "model.onnx", model)
    card = json.loads((folder / "model_card.json").read_text())
    card["classes"] = card["classes"][:4]
    (folder / "model_card.json").write_text(json.dumps(card))
    r = heart("predict", model, TEST_BEATS, expect=1)
    assert _error(r) == (
        f"error: {folder / 'model_card.json'} does not match model.onnx: the card says 187 "
        "samples in, 4 classes out; the model takes 187 and gives 5; export again"
    )
    (folder / "model_card.json").write_text('{"classes": ["N", "S"')  # cut off mid-write
    r = heart("predict", model, TEST_BEATS, expect=1)
    assert _error(r) == (
        f"error: {folder / 'model_card.json'}: truncated or unreadable; export the model again"
    )
    (folder / "model_card.json").unlink()
    r = heart("predict", model, TEST_BEATS, expect=1)
    assert _error(r) == (
        f"error: {model}: no model_card.json beside it; use the folder `heart export` wrote"
    )


# --------------------------------------------------------------------------- the output guard


def test_outputs_never_replace_a_records_own_files_or_a_runs(heart, tiny, tmp_path, mitdb_dir):
    record = copy_record(mitdb_dir, tmp_path / "rec")
    own = {p.name: p.read_bytes() for p in record.parent.iterdir()}
    for annotator in ("atr", "hea", "dat"):  # OUT/100.<annotator> would be its own file
        r = heart("predict", tiny.run, record, "--format", "wfdb", "--out", record.parent,
                  "--annotator", annotator, "--force", expect=2)  # fmt: skip
        assert _error(r) == (
            f"error: --out {record}.{annotator}: is the input {record}.{annotator}; write the "
            "output elsewhere"
        )
    linked = tmp_path / "beats.csv"
    linked.symlink_to(record.parent / "100.atr")  # another spelling of the same file
    r = heart("predict", tiny.run, record, "--out", linked, expect=2)
    assert "is the input" in _error(r)
    assert {p.name: p.read_bytes() for p in record.parent.iterdir()} == own
    run = tmp_path / "run"
    shutil.copytree(tiny.run, run)
    (run / "folds").mkdir()  # a run's sub-folder, as --folds makes them
    history = (run / "history.csv").read_bytes()
    for out in (run / "history.csv", run / "new.csv", run / "folds" / "fold-1" / "x.json"):
        r = heart("predict", run, TEST_BEATS, "--out", out, expect=2)
        assert _error(r).endswith(
            f"a file of the run folder {run} (heart keeps its files); choose a path outside it"
        ), out
    assert (run / "history.csv").read_bytes() == history and not (run / "new.csv").exists()
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    r = heart("predict", tiny.run, record, "--format", "wfdb", "--out", a_file, expect=2)
    assert _error(r) == f"error: --out {a_file}: a file, not a folder; name a folder"
    heart("-q", "predict", tiny.run, record, "--format", "wfdb", "--out", record.parent)
    assert sorted(p.name for p in record.parent.iterdir()) == [
        "100.atr",
        "100.dat",
        "100.hea",
        "100.heart",
    ]  # fmt: skip  (nothing left of the annotation file's making)


def test_a_rhythm_column_of_text_is_one_line(heart, tmp_path):
    from conftest import make_config

    heart("-q", "train", "-c", make_config(tmp_path, model={"rhythm": True}), "--name", "rh")
    table = pq.read_table(TEST_BEATS)
    i = table.schema.get_field_index("rr_pre")
    texts = pa.array([str(v) for v in table.column("rr_pre").to_pylist()])
    pq.write_table(table.set_column(i, "rr_pre", texts), tmp_path / "text.parquet")
    r = heart("predict", "runs/rh", tmp_path / "text.parquet", expect=1)
    assert _error(r) == (
        f"error: {tmp_path / 'text.parquet'}: rhythm column rr_pre holds string, not floats; "
        "rebuild the dataset with `heart fetch`"
    )


def test_a_record_with_a_name_wfdb_cannot_read_is_one_line(heart, tiny, tmp_path, mitdb_dir):
    folder = tmp_path / "rec"
    folder.mkdir()
    for ext in ("hea", "dat", "atr"):
        shutil.copy(mitdb_dir / f"100.{ext}", folder / f"é100.{ext}")
    header = (folder / "é100.hea").read_text().replace("100", "é100")
    (folder / "é100.hea").write_text(header)
    r = heart("predict", tiny.run, folder / "é100", expect=1)
    assert "is not ASCII; WFDB reads only ASCII names" in _error(r)


# --------------------------------------------- moved here from tests/test_hardening.py


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def test_predict_refuses_beats_far_outside_the_training_range(heart, sample_dir, tmp_path):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "r")
    lo, hi = json.loads(Path("runs/r/manifest.json").read_text())["data"]["input_range"]
    assert 0.0 <= lo < hi <= 1.0
    table = pq.read_table(sample_dir / "random" / "test.parquet")
    x = np.stack([table.column(str(i)).to_numpy() for i in range(187)], axis=1)[:50]
    ok = tmp_path / "ok.parquet"
    pq.write_table(pa.table({str(i): x[:, i] for i in range(187)}), ok)
    heart("-q", "predict", "runs/r", ok)
    raw = x.astype(np.float64) * 1e30
    bad = tmp_path / "raw.parquet"
    pq.write_table(pa.table({str(i): raw[:, i] for i in range(187)}), bad)
    line = error_line(heart("predict", "runs/r", bad, expect=None), 1)
    assert re.match(
        rf"error: {re.escape(str(bad))}: \d+ of 50 beats are far outside the range the model "
        r"was trained on \[",
        line,
    )
