"""`--adapt signal|labels` through the CLI (`heart predict`, `heart evaluate --records`) on
real MIT-BIH records: each recording adapts its own copy of the model, the learning
period's beats are never scored, the run folder is never written, bad input is one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import SAMPLE, copy_record, copy_run, cut_record

from heartcli.io import sha256_file

PERIOD = 120  # seconds: the learning period of these tests (records cut to 6 minutes)
START = PERIOD * 360  # its first sample after, at 360 Hz


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's trained run (the quick-start CNN, classes N S V F Q)."""
    return copy_run(trained_run, tmp_path / "runs" / "tiny")


@pytest.fixture(scope="module")
def records(mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 6 minutes of records 203 and 233 (many V beats, rhythm annotations)."""
    folder = tmp_path_factory.mktemp("records")
    for name in ("203", "233"):
        cut_record(mitdb_dir, folder, name, minutes=6)
    return folder


def sums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _proba(path: Path) -> np.ndarray:
    table = pacsv.read_csv(path)
    return np.stack([table.column(f"p_{c}").to_numpy() for c in "NSVFQ"], axis=1)


# ----------------------------------------------------------------- one recording at a time


@pytest.mark.parametrize("mode", ["signal", "labels"])
def test_two_records_in_one_call_get_what_each_gets_alone(heart, run, records, mode):
    a, b = records / "203", records / "233"
    args = ("--peaks", "annotations", "-f", PERIOD, "--adapt", mode)
    both = heart.json("evaluate", run, "--records", f"{a},{b}", *args)
    alone = [heart.json("evaluate", run, "--records", r, *args)["records"][0] for r in (a, b)]
    assert both["protocol"] == f"adapt-{mode}"
    for together, single in zip(both["records"], alone, strict=True):
        assert together["matrix"] == single["matrix"]
        assert together["adaptation"]["learning_beats"] == single["adaptation"]["learning_beats"]
    # ... and predict gives the same labels as the evaluation scored.
    plain = heart.json("evaluate", run, "--records", f"{a},{b}", "--peaks", "annotations",
                       "-f", PERIOD)  # fmt: skip
    assert plain["protocol"] == "plain" and "adaptation" not in plain["records"][0]
    assert [r["matrix"] for r in plain["records"]] != [r["matrix"] for r in both["records"]]


def test_adapted_predictions_are_the_records_own(heart, run, records, tmp_path):
    """predict --adapt on one record: its probabilities change, and do not depend on which
    record was adapted before (each starts from the run's model); labels are deterministic."""
    out = {}
    for name in ("plain", "signal", "labels", "labels-again"):
        extra = () if name == "plain" else ("--adapt", name.split("-")[0], "-f", PERIOD)
        heart("-q", "predict", run, records / "233", "--peaks", "annotations", *extra,
              "--out", tmp_path / f"{name}.csv")  # fmt: skip
    for name in ("plain", "signal", "labels", "labels-again"):
        out[name] = _proba(tmp_path / f"{name}.csv")
    plain = out["plain"][-len(out["signal"]) :]
    assert not np.allclose(plain, out["signal"], atol=1e-4)
    assert not np.allclose(plain, out["labels"], atol=1e-4)
    assert np.array_equal(out["labels"], out["labels-again"])


# ----------------------------------------------------------------- the learning period


@pytest.mark.parametrize("mode", ["signal", "labels"])
def test_learning_period_beats_are_never_scored(heart, run, records, tmp_path, mode):
    record = records / "203"
    s = heart.json("predict", run, record, "--peaks", "annotations", "--adapt", mode,
                   "-f", PERIOD, "--out", tmp_path / "a.csv")  # fmt: skip
    heart("-q", "predict", run, record, "--peaks", "annotations", "--out", tmp_path / "p.csv")
    adapted = pacsv.read_csv(tmp_path / "a.csv").to_pydict()
    every = pacsv.read_csv(tmp_path / "p.csv").to_pydict()
    learning = sum(1 for x in every["sample"] if x < START)
    assert learning > 100 and s["adaptation"]["learning_beats"] == learning
    assert min(adapted["sample"]) >= START  # no learning-period beat in the output
    assert adapted["sample"] == [x for x in every["sample"] if x >= START]
    assert s["beats"] == len(adapted["sample"]) and s["agreement"]["beats"] == s["beats"]
    assert set(adapted["protocol"]) == {f"adapt-{mode}"} and "protocol" not in every
    assert s["protocol"] == f"adapt-{mode}"
    assert any(f"the first {PERIOD} s ({learning:,} beats)" in n for n in s["notes"])
    if mode == "labels":  # the learning period's .atr beats taught it
        assert s["adaptation"]["labelled_beats"] == learning
        assert sum(s["adaptation"]["labels"].values()) == learning
    # EC57: the same reference beats are scored with and without adaptation (the ones after
    # the learning period), and the CSV names the protocol on every line.
    doc = heart.json("evaluate", run, "--records", record, "--peaks", "annotations",
                     "-f", PERIOD, "--adapt", mode, "--out", tmp_path / "bxb.csv")  # fmt: skip
    plain = heart.json("evaluate", run, "--records", record, "--peaks", "annotations",
                       "-f", PERIOD)  # fmt: skip
    scored = [d["records"][0]["qrs_tp"] + d["records"][0]["qrs_fn"] for d in (doc, plain)]
    assert scored[0] == scored[1] == len(adapted["sample"]) + 1  # + the last beat (missed)
    lines = list(csv.reader((tmp_path / "bxb.csv").open()))
    assert lines[0][-1] == "Protocol" and {line[-1] for line in lines[1:]} == {f"adapt-{mode}"}


# ----------------------------------------------------------------- never written


def test_adaptation_never_writes_into_the_run_folder(heart, run, records, tmp_path):
    before = sums(run)
    for mode in ("signal", "labels"):
        heart("-q", "predict", run, records / "233", "--adapt", mode, "-f", PERIOD,
              "--out", tmp_path / f"{mode}.json")  # fmt: skip
        heart("-q", "evaluate", run, "--records", records, "--adapt", mode, "-f", PERIOD,
              "--peaks", "annotations")  # fmt: skip
    assert sums(run) == before


# ----------------------------------------------------------------- bad input


def test_adapt_refusals(heart, run, records, mitdb_dir, tmp_path):
    short = cut_record(mitdb_dir, tmp_path / "short", "100", minutes=2)
    too_short = heart("predict", run, short, "--adapt", "signal", expect=2)
    assert _error(too_short) == (
        "error: 100: the recording is 120 s long, not longer than the learning period (300 s): "
        "nothing would be left to classify after adapting; lower --learning-period"
    )
    longer = heart("predict", run, records / "233", "--adapt", "labels", "-f", 400, expect=2)
    assert "233: the recording is 360 s long, not longer than the learning period (400 s)" in (
        _error(longer)
    )
    # Record 100's first beat is at 0.21 s: a 0.1 s learning period holds none.
    no_beat = heart("predict", run, short, "--adapt", "signal", "-f", 0.1, expect=2)
    assert _error(no_beat) == (
        "error: 100: no beat in the learning period (the first 0.1 s): nothing to adapt the "
        "model to; raise --learning-period or leave out --adapt"
    )
    bare = copy_record(mitdb_dir, tmp_path / "bare", "100", atr=False)
    no_atr = heart("predict", run, bare, "--adapt", "labels", expect=2)
    assert f"--adapt labels: {bare} has no 100.atr" in _error(no_atr)
    beat_file = heart("predict", run, SAMPLE / "random" / "test.parquet", "--adapt", "signal",
                      expect=2)  # fmt: skip
    assert "--adapt reads the learning period of a WFDB record" in _error(beat_file)
    alone = heart("predict", run, short, "-f", 60, expect=2)
    assert "--learning-period sets the learning period of --adapt" in _error(alone)
    zero = heart("evaluate", run, "--records", short, "--adapt", "signal", "-f", 0, expect=2)
    assert "--adapt needs a learning period of more than 0 seconds" in _error(zero)


def test_evaluate_refuses_or_skips_records_adapt_cannot_use(heart, run, records, mitdb_dir,
                                                            tmp_path):  # fmt: skip
    folder = tmp_path / "recs"
    cut_record(mitdb_dir, folder, "100", minutes=2)  # shorter than the learning period
    cut_record(mitdb_dir, folder, "203", minutes=6)
    refused = heart("evaluate", run, "--records", folder, "--adapt", "signal", "-f", 150,
                    expect=2)  # fmt: skip
    assert "100: the recording is 120 s long, not longer than the learning period (150 s)" in (
        _error(refused)
    )
    doc = heart.json("evaluate", run, "--records", folder, "--adapt", "signal", "-f", 150,
                     "--peaks", "annotations", "--skip-missing")  # fmt: skip
    assert [r["record"] for r in doc["records"]] == ["203"]
    assert doc["excluded"]["too_short"] == ["100"]
    assert any(n.startswith("left out (--skip-missing): 100: the recording is") for n in
               doc["notes"])  # fmt: skip
    shown = heart("evaluate", run, "--records", folder, "--adapt", "signal", "-f", 150,
                  "--peaks", "annotations", "--skip-missing").stdout  # fmt: skip
    assert "left out, not longer than the learning period (--skip-missing): 100" in shown
    assert "protocol adapt-signal" in shown
    no_beat = heart("evaluate", run, "--records", folder / "203", "--adapt", "labels",
                    "-f", 0.05, expect=2)  # fmt: skip
    assert "203: no beat in the learning period (the first 0.05 s)" in _error(no_beat)


def test_exported_models_refuse_adapt(heart, run, records, tmp_path):
    export = tmp_path / "export"
    heart("-q", "export", run, "--format", "onnx", "--out", export)
    for command in (("predict", export / "model.onnx", records / "233"),
                    ("evaluate", export / "model.onnx", "--records", records / "233")):  # fmt: skip
        refused = heart(*command, "--adapt", "signal", expect=2)
        assert _error(refused) == (
            "error: --adapt: model.onnx is an export, whose BatchNorm statistics and head are "
            "fixed in it; adaptation needs the run folder it was exported from"
        )
    plain = json.loads(heart("--json", "predict", export / "model.onnx", records / "233").stdout)
    assert plain["protocol"] == "plain" and plain["adaptation"] is None


# ----------------------------------------------------------------- rhythm, ensembles


@pytest.mark.slow
def test_rhythm_ensemble_adapts_every_member(heart, records, tmp_path):
    """A rhythm model's rhythm standardisation is re-centred on the recording; in an
    ensemble (`--folds 2` with final = "ensemble") every member is adapted, and the members'
    folders stay as they were."""
    from conftest import quick_args

    runs = tmp_path / "runs"
    heart("-q", "train", *quick_args(
        "data.split=inter-patient", 'data.classes={Q = "drop"}', "resample.min_beats=1",
        "model.rhythm=true", "train.final=ensemble", "train.scheduler=cosine",
        f"train.runs_dir={runs}",
    ), "--folds", "2", "--name", "ens")  # fmt: skip
    run = runs / "ens"
    before = sums(run)
    record = records / "233"
    signal = heart.json("predict", run, record, "--adapt", "signal", "-f", PERIOD)
    assert signal["adaptation"]["rhythm_recentred"] == 2  # one rhythm input per member
    assert signal["adaptation"]["batchnorm_layers"] > 2
    labels = heart.json("predict", run, record, "--adapt", "labels", "-f", PERIOD)
    tuned = labels["adaptation"]["fine_tune"]
    assert tuned["loss_after"] < tuned["loss_before"]
    args = ("--peaks", "annotations", "-f", PERIOD, "--adapt", "labels")
    both = heart.json("evaluate", run, "--records", f"{records / '203'},{record}", *args)
    alone = heart.json("evaluate", run, "--records", record, *args)
    assert both["records"][1]["matrix"] == alone["records"][0]["matrix"]
    assert sums(run) == before
