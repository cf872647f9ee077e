"""EC57 scoring of whole records (`heart evaluate MODEL --records`) and WFDB annotations out
(`heart predict --format wfdb`), through the CLI on the real MIT-BIH records, checked
against independent references: wfdb's compare_annotations for the QRS counts, heart's own
AAMI table (:mod:`heartcli.metrics.aami`) for the classes on the .atr's beats, and hand-worked
annotation pairs for bxb's matching rules."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import SAMPLE, copy_record, cut_record, record_at_250_hz

from heartcli.data.mitdb import AAMI_MAP
from heartcli.evaluate import ec57
from heartcli.metrics import aami


@pytest.fixture
def model(trained_run: Path) -> Path:
    """The session's trained run (conftest: the quick-start CNN, 1 epoch on the bundled
    sample): its classes are N S V F Q."""
    return trained_run


def reference_beats(record: Path) -> np.ndarray:
    import wfdb

    ann = wfdb.rdann(str(record), "atr")
    return np.array([p for p, s in zip(ann.sample, ann.symbol, strict=True) if s in AAMI_MAP])


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------- annotations out


def test_wfdb_annotations_read_back_as_the_csv(heart, model, tmp_path, mitdb_dir):
    import wfdb

    record = cut_record(mitdb_dir, tmp_path / "rec", "203")
    out = tmp_path / "ann"
    s = heart.json("predict", model, record, "--peaks", "detect", "--format", "wfdb", "--out", out)
    assert s["out"] == str(out / "203.heart") and (out / "203.heart").is_file()
    heart("predict", model, record, "--peaks", "detect", "--out", tmp_path / "p.csv")
    rows = pacsv.read_csv(tmp_path / "p.csv").to_pydict()
    ann = wfdb.rdann(str(out / "203"), "heart")
    assert ann.fs == 360 and len(ann.sample) == s["beats"] == len(rows["sample"])
    assert ann.sample.tolist() == rows["sample"]
    assert ann.symbol == rows["predicted"]  # the model's classes are N S V F Q
    p = [rows[f"p_{c}"][i] for i, c in enumerate(rows["predicted"])]
    assert np.allclose([float(a.removeprefix("p=")) for a in ann.aux_note], p, atol=1e-4)
    # A second write needs --force; another annotator name writes another file.
    again = heart("predict", model, record, "--format", "wfdb", "--out", out, expect=2)
    assert "203.heart exists; pass --force" in _error(again)
    heart("-q", "predict", model, record, "--format", "wfdb", "--out", out, "--force")
    heart("-q", "predict", model, record, "--format", "wfdb", "--out", out, "--annotator", "cnn")
    assert sorted(p.name for p in out.iterdir()) == ["203.cnn", "203.heart"]
    bad = heart(
        "predict", model, record, "--format", "wfdb", "--out", out, "--annotator", "a.b", expect=2
    )
    assert "--annotator 'a.b'" in _error(bad)
    beats = heart("predict", model, SAMPLE / "random" / "test.parquet", "--format", "wfdb",
                  "--out", out, expect=2)  # fmt: skip
    assert "writes the beats of a WFDB record" in _error(beats)


# ----------------------------------------------------------------- scoring


def test_qrs_counts_equal_wfdb_compare_annotations(heart, model, tmp_path, mitdb_dir):
    """Whole records, learning period 0: the QRS TP/FN/FP of every record equal
    wfdb.processing.compare_annotations of the same beats (150 ms = 54 samples)."""
    from wfdb.processing import compare_annotations

    folder = tmp_path / "recs"
    for name in ("105", "203"):
        cut_record(mitdb_dir, folder, name)
    doc = heart.json("evaluate", model, "--records", folder, "-f", "0")
    assert [r["record"] for r in doc["records"]] == ["105", "203"]
    for entry in doc["records"]:
        heart("-q", "predict", model, folder / entry["record"], "--peaks", "detect",
              "--out", tmp_path / "p.csv")  # fmt: skip
        test = pacsv.read_csv(tmp_path / "p.csv").column("sample").to_numpy()
        ref = reference_beats(folder / entry["record"])
        wfdb_cmp = compare_annotations(ref, test, 54)
        assert (entry["qrs_tp"], entry["qrs_fn"], entry["qrs_fp"]) == (
            wfdb_cmp.tp, wfdb_cmp.fn, wfdb_cmp.fp,
        )  # fmt: skip
    gross = doc["gross"]
    assert gross["qrs_fp"] > 0 and gross["qrs_fn"] > 0  # errors of both kinds to agree on
    assert gross["qrs_tp"] == sum(r["qrs_tp"] for r in doc["records"])
    assert gross["qrs_se"] == pytest.approx(gross["qrs_tp"] / (gross["qrs_tp"] + gross["qrs_fn"]))
    assert doc["average"]["qrs_se"] == pytest.approx(np.mean([r["qrs_se"] for r in doc["records"]]))
    for key in (*ec57.STAT_KEYS, *ec57.COUNT_KEYS):
        assert key in gross and key in doc["average"] and key in doc["records"][0]


def test_annotation_peaks_equal_the_aami_table(heart, model, tmp_path, mitdb_dir):
    """--peaks annotations: the classes of the .atr's own beats after the learning period
    are exactly heart's AAMI confusion matrix of the same beats (predict's CSV)."""
    record = copy_record(mitdb_dir, tmp_path / "rec", "203")
    doc = heart.json("evaluate", model, "--records", record, "--peaks", "annotations")
    (entry,) = doc["records"]
    heart("-q", "predict", model, record, "--peaks", "annotations", "--out", tmp_path / "p.csv")
    rows = pacsv.read_csv(tmp_path / "p.csv").to_pydict()
    scored = np.asarray(rows["sample"]) >= 300 * 360
    classes = list(ec57.CLASSES)
    cm = np.zeros((5, 5), dtype=np.int64)
    for ref, pred, keep in zip(rows["reference"], rows["predicted"], scored, strict=True):
        if keep:
            cm[classes.index(ref), classes.index(pred)] += 1
    m = np.array([[entry["matrix"][r].get(c, 0) for c in ec57.MATRIX_COLUMNS]
                  for r in ec57.MATRIX_ROWS])  # fmt: skip
    assert (m[:5, :5] == cm).all() and m[5].sum() == 0  # no false beats: the .atr's own
    # The record's last beat has no next beat to cut it with: the one beat missed.
    assert m[:5, 5].sum() == len(reference_beats(record)[reference_beats(record) >= 108000]) - (
        cm.sum()
    )
    table = aami.scored_matrix(cm, classes)
    for row, key in (("V", "veb"), ("S", "sveb")):
        figures = aami.class_figures(table, classes, row)
        missed = m[classes.index(row), 5]
        assert entry[f"{key}_tp"] == figures["tp"]
        assert entry[f"{key}_fn"] == figures["fn"] + missed
        assert entry[f"{key}_fp"] == figures["fp"]
    assert entry["veb_tp"] + entry["veb_fn"] > 300  # record 203 has many V beats


def test_records_folder_csv_paced_and_missing(heart, model, tmp_path, mitdb_dir):
    folder = tmp_path / "recs"
    cut_record(mitdb_dir, folder, "100")
    cut_record(mitdb_dir, folder, "104")  # paced: left out by default
    copy_record(mitdb_dir, folder, "101", atr=False)
    refused = heart("evaluate", model, "--records", folder, expect=1)
    assert "no reference annotations (.atr) for 1 record(s)" in _error(refused)
    assert "101" in _error(refused) and "--skip-missing" in _error(refused)
    out = tmp_path / "bxb.csv"
    doc = heart.json(
        "evaluate", model, "--records", folder, "--skip-missing", "--out", out, "-f", "60"
    )
    assert [r["record"] for r in doc["records"]] == ["100"]
    assert doc["excluded"] == {"paced": ["104"], "no_atr": ["101"]}
    assert doc["learning_period_s"] == 60
    lines = list(csv.reader(out.open()))
    assert tuple(lines[0]) == ec57.BXB_COLUMNS
    assert [line[0] for line in lines[1:]] == ["100", "Gross", "Average"]
    assert doc["notes"] == []
    r = doc["records"][0]
    m = r["matrix"]
    assert int(lines[1][1]) == m["N"]["n"] + m["N"]["f"] + m["N"]["q"]  # Nn'
    assert lines[1][13] == str(r["veb_tp"]) and lines[1][20] == f"{100 * r['qrs_se']:.2f}"
    shown = heart("evaluate", model, "--records", f"{folder / '100'},{folder / '104'}").stdout
    assert "left out, paced (EC57): 104" in shown and "gross" in shown
    paced = heart.json(
        "evaluate", model, "--records", folder / "104", "--include-paced", "--peaks", "annotations"
    )
    assert [r["record"] for r in paced["records"]] == ["104"] and paced["excluded"]["paced"] == []
    assert paced["records"][0]["matrix"]["Q"]["o"] <= 1  # paced beats are Q, scored as beats
    assert sum(paced["records"][0]["matrix"]["Q"].values()) > 100


def test_records_listed_twice_are_scored_once_and_namesakes_get_their_own_rows(
    heart, model, tmp_path, mitdb_dir
):
    a = cut_record(mitdb_dir, tmp_path / "a", "100", minutes=2)
    b = cut_record(mitdb_dir, tmp_path / "b", "100", minutes=3)  # another record named 100
    args = ("evaluate", model, "--peaks", "annotations", "-f", "0", "--records")
    once = heart.json(*args, str(a))
    twice = heart.json(*args, f"{a},{a}.hea,{tmp_path / 'a' / '.' / '100'}")
    assert [r["record"] for r in twice["records"]] == ["100"]
    assert twice["gross"] == once["gross"]  # not counted twice
    dotted = tmp_path / "a" / "." / "100"
    assert twice["notes"] == [
        f"{a}.hea is {a} again: scored once",
        f"{dotted} is {a} again: scored once",
    ]
    both = heart.json(*args, f"{a},{b}")
    assert [r["record"] for r in both["records"]] == ["a/100", "b/100"]
    beats = [r["qrs_tp"] + r["qrs_fn"] for r in both["records"]]
    assert beats[0] < beats[1] and both["gross"]["qrs_tp"] + both["gross"]["qrs_fn"] == sum(beats)


def test_learning_period_and_out_are_refused_before_any_record_is_scored(
    heart, model, tmp_path, mitdb_dir
):
    import shutil
    import subprocess
    import sys

    record = cut_record(mitdb_dir, tmp_path / "rec", "100", minutes=1)
    for value in ("inf", "1e17", "1" + "0" * 400):  # a number too long to echo whole
        done = subprocess.run(
            [sys.executable, "-m", "heartcli", "evaluate", str(model), "--records", str(record),
             "-f", value],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert _error(done).startswith(f"error: -f/--learning-period {float(value):.6g}: use 0 ")
    run = tmp_path / "run"
    shutil.copytree(model, run)
    history = (run / "history.csv").read_bytes()
    r = heart("evaluate", model, "--records", record, "--out", run / "history.csv", expect=2)
    assert _error(r).startswith(f"error: --out {run / 'history.csv'}: a file of the run folder")
    r = heart("evaluate", model, "--records", record, "--out", f"{record}.hea", expect=2)
    assert "--out" in _error(r) and (run / "history.csv").read_bytes() == history


def test_bad_annotation_files(heart, model, tmp_path, mitdb_dir):
    import wfdb

    record = copy_record(mitdb_dir, tmp_path / "rec", "100")
    ann = wfdb.rdann(str(record), "atr")
    wfdb.wrann("100", "atr", ann.sample + 700_000, symbol=ann.symbol, write_dir=str(record.parent))
    past = heart("evaluate", model, "--records", record, expect=1)
    assert f"{record}.atr: beat annotations up to sample" in _error(past)
    assert "past the signal's end (650,000 samples)" in _error(past)
    wfdb.wrann("100", "atr", np.array([5, 9]), symbol=["+", "~"], write_dir=str(record.parent))
    empty = heart("evaluate", model, "--records", record, expect=1)
    assert f"{record}.atr: no beat annotations" in _error(empty)
    missing = heart("evaluate", model, "--records", f"{tmp_path / 'nope'}", expect=2)
    assert "nope.hea missing" in _error(missing)
    both = heart("evaluate", model, "--records", record, "--split", "random", expect=2)
    assert "takes no --data/--split" in _error(both)


def test_record_at_250_hz_is_scored_in_its_own_samples(heart, model, tmp_path, mitdb_dir):
    """Record 100's first 10 minutes written at 250 Hz: the .atr and heart's beats are
    compared at 250 Hz (window 38 samples); the figures are those of the 360 Hz record."""
    import wfdb

    folder = tmp_path / "slow"
    slow = wfdb.rdrecord(str(record_at_250_hz(mitdb_dir, folder, 216000))).p_signal[:, 0]
    doc = heart.json("evaluate", model, "--records", folder / "slow")
    (entry,) = doc["records"]
    short = heart.json("evaluate", model, "--records", folder / "slow", "-f", "900")
    assert short["notes"] == [
        "slow: no reference beat after the learning period (900 s; the record is 600 s): "
        "nothing scored; lower -f/--learning-period"
    ]
    assert short["gross"]["qrs_se"] is None and short["average"]["qrs_se"] is None
    assert entry["fs"] == 250
    reference = reference_beats(folder / "slow")
    assert entry["qrs_tp"] + entry["qrs_fn"] == int((reference >= 75000).sum())
    assert entry["qrs_se"] >= 0.995 and entry["qrs_ppv"] >= 0.995
    heart("-q", "predict", model, folder / "slow", "--format", "wfdb", "--out", folder)
    written = wfdb.rdann(str(folder / "slow"), "heart")
    assert written.fs == 250 and int(written.sample.max()) < len(slow)


# ----------------------------------------------------------------- bxb's matching rules


def _beats(samples: list[int], labels: str | None = None) -> ec57.BeatAnnotations:
    labels = labels or "N" * len(samples)
    return ec57.BeatAnnotations(
        np.asarray(samples, dtype=np.int64), np.asarray([ec57.CLASSES.index(c) for c in labels])
    )


def _matrix(ref, test, **kw) -> dict[str, dict[str, int]]:
    kw.setdefault("start_s", 0)
    kw.setdefault("fs", 360)
    return ec57.matrix_dict(ec57.compare(ref, test, **kw).matrix)


def test_test_beat_between_two_reference_beats():
    """A test beat halfway between two reference beats (180 samples from each, window 54)
    matches neither: both reference beats are paired with their own test beats and the
    middle one is a false detection; when it is within the window of the first it is the
    better match and the first's own test beat (60 samples late) the false one."""
    m = _matrix(_beats([1000, 1360]), _beats([1000, 1180, 1360]))
    assert m["N"]["n"] == 2 and m["O"]["n"] == 1 and m["N"]["o"] == 0
    m = _matrix(_beats([1000, 1360]), _beats([1030, 1060, 1360], "NVN"))
    assert m["N"]["n"] == 2 and m["O"]["v"] == 1  # 1030 pairs (30 < 54), 1060 is false


def test_two_test_beats_in_one_window():
    """Two test beats within 150 ms of one reference beat: one is paired, the other is a
    false detection with its own label (here V: a VEB false positive). Equally close (10
    samples each), the later one is paired: bxb's comparisons are strict."""
    m = _matrix(_beats([1000, 1360], "VN"), _beats([990, 1010, 1360], "VNN"))
    c = ec57.counts_of(np.array([[m[r].get(c, 0) for c in ec57.MATRIX_COLUMNS]
                                 for r in ec57.MATRIX_ROWS]))  # fmt: skip
    assert m["V"]["n"] == 1 and m["O"]["v"] == 1
    m = _matrix(_beats([1000]), _beats([980, 1010]))  # the closer one is paired
    assert m["N"]["n"] == 1 and m["O"]["n"] == 1
    assert (c["qrs_tp"], c["qrs_fp"], c["qrs_fn"]) == (2, 1, 0)
    assert (c["veb_tp"], c["veb_fn"], c["veb_fp"]) == (0, 1, 1)


def test_learning_period_and_the_last_beat():
    """Beats before the start are not scored; the last test beat before it may still pair
    with the first reference beat after it; the record's last reference beat without a
    test beat is missed, and a test beat after the record's end is not scored."""
    fs, start = 360, 1.0  # start at sample 360
    ref = _beats([100, 340, 380, 700, 1000])
    test = _beats([100, 200, 350, 700, 1100])
    m = _matrix(ref, test, fs=fs, start_s=start, end=1050)
    # 100/100, 340 and 200 are in the learning period; 350 (before it) pairs with 380;
    # 700/700; the last reference beat (1000) is missed; 1100 is past the end (1050).
    assert m["N"]["n"] == 2 and m["N"]["o"] == 1 and m["O"]["n"] == 0
    m = _matrix(ref, test, fs=fs, start_s=start)  # end: the last beat (1100)
    assert m["N"]["o"] == 1 and m["O"]["n"] == 1
    # A first test beat inside the window after the start, when the next one matches the
    # first reference beat better, is dropped without counting (bxb's main).
    m = _matrix(_beats([420, 800]), _beats([370, 421, 800]), fs=fs, start_s=start)
    assert m["N"]["n"] == 2 and m["O"]["n"] == 0


def test_vf_episode_and_q_rules():
    """Reference beats inside [ ... ] are skipped and test beats there not counted; Q and F
    labelled V count neither as VEB false positive nor as negative; Q labelled S neither
    as SVEB false positive."""
    ref = ec57.beats_from(
        [100, 400, 500, 600, 900, 1200, 1500], ["N", "[", "N", "]", "F", "Q", "Q"]
    )
    assert ref.sample.tolist() == [100, 900, 1200, 1500] and ref.vf == [(400, 600)]
    test = _beats([100, 450, 550, 900, 1200, 1500], "NVNVVS")
    c = ec57.compare(ref, test, fs=360, start_s=0).counts()
    assert (c["qrs_tp"], c["qrs_fp"], c["qrs_fn"]) == (4, 0, 0)
    assert c["veb_fp"] == 0 and c["veb_tn"] == 2 and c["sveb_fp"] == 0  # Nn and Qs


def test_detected_beats_sit_on_the_reference_r_peaks(heart, model, tmp_path, mitdb_dir):
    """gqrs (the default) marks the QRS ~12 samples early; heart moves the marks to the
    R-peak, where the .atr puts the beats and the beat cut starts: as close as XQRS's."""
    from heartcli.predict.segment import match_peaks

    record = cut_record(mitdb_dir, tmp_path / "rec", "119", minutes=10)  # 140 PVCs
    ref = reference_beats(record)
    for detector in ("gqrs", "xqrs"):
        heart("-q", "predict", model, record, "--peaks", "detect", "--detector", detector,
              "--out", tmp_path / f"{detector}.csv")  # fmt: skip
        found = pacsv.read_csv(tmp_path / f"{detector}.csv").column("sample").to_numpy()
        match = match_peaks(ref, found, 54)
        offset = found[match[match >= 0]] - ref[match >= 0]
        assert (match >= 0).mean() >= 0.995
        assert abs(np.median(offset)) <= 1 and np.mean(np.abs(offset) <= 3) >= 0.75, detector


# ----------------------------------------------------------------- --plot


def test_plot_draws_each_records_worst_stretches(heart, model, tmp_path, mitdb_dir):
    """--plot DIR: a PNG per record with disagreements, its strips holding the most of them;
    every disagreement of the EC57 matrix (off its diagonal) is counted, none of the
    learning period's."""
    import matplotlib.image as mpimg

    folder = tmp_path / "recs"
    for name in ("203", "233"):
        cut_record(mitdb_dir, folder, name, minutes=6)
    plots = tmp_path / "plots" / "new"  # made when missing
    doc = heart.json("evaluate", model, "--records", folder, "--peaks", "annotations",
                     "-f", 120, "--plot", plots)  # fmt: skip
    assert doc["plots"] == str(plots)
    for entry in doc["records"]:
        m = np.array([[entry["matrix"][r].get(c, 0) for c in ec57.MATRIX_COLUMNS]
                      for r in ec57.MATRIX_ROWS])  # fmt: skip
        plot = entry["plot"]
        assert plot["errors"] == m.sum() - np.trace(m[:5, :5]) > 0
        assert plot["png"] == str(plots / f"{entry['record']}.png")
        image = mpimg.imread(plot["png"])
        assert image.shape[0] > 500 and image.shape[1] > 1000  # three strips, stacked
        stretches = plot["stretches"]
        assert 1 <= len(stretches) <= 3
        assert [s["errors"] for s in stretches] == sorted((s["errors"] for s in stretches),
                                                          reverse=True)  # fmt: skip
        for s in stretches:
            assert s["to_s"] - s["from_s"] == pytest.approx(10.0)
            assert s["from_s"] >= 120 - 10 and s["errors"] >= 1
        spans = sorted((s["from_s"], s["to_s"]) for s in stretches)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap
    assert sorted(p.name for p in plots.iterdir()) == ["203.png", "233.png"]
    shown = heart("evaluate", model, "--records", folder / "203", "--peaks", "annotations",
                  "-f", 120, "--plot", plots).stdout  # fmt: skip
    assert f"plots: 1 PNG(s) of the worst stretches in {plots}" in shown
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    refused = heart("evaluate", model, "--records", folder, "--plot", afile, expect=2)
    assert "--plot" in _error(refused) and "not a folder" in _error(refused)
    no_records = heart("evaluate", model, "--plot", plots, expect=2)
    assert "--out, --adapt and --plot need --records" in _error(no_records)
