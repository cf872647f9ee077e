"""`heart resample`: every strategy's class counts on the real sample, and senseless targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from heartcli.data.dataset import load_split, read_beats, write_beats
from heartcli.io import sha256_file

BEFORE = {"N": 900, "S": 315, "V": 405, "F": 270, "Q": 315}  # random split minus validation
VALIDATION = {"N": 100, "S": 35, "V": 45, "F": 30, "Q": 35}


def run(heart, data: Path, *sets: str):
    args = ["resample", "--set", f"data.dir={data}", "--out", "fold.parquet"]
    for item in sets:
        args += ["--set", item]
    return heart.json(*args)


@pytest.mark.parametrize(
    ("strategy", "majority", "after"),
    [
        ("none", "cap", BEFORE),
        ("class_weight", "cap", BEFORE),
        ("random", "cap", {c: 500 for c in "NSVFQ"}),
        ("random", "keep", {"N": 900, "S": 500, "V": 500, "F": 500, "Q": 500}),
        ("random", "drop", {"N": 0, "S": 500, "V": 500, "F": 500, "Q": 500}),
        ("smote", "cap", {c: 500 for c in "NSVFQ"}),
        ("smote", "keep", {"N": 900, "S": 500, "V": 500, "F": 500, "Q": 500}),
    ],
)
def test_exact_counts(heart, sample_dir, strategy, majority, after):
    result = run(
        heart,
        sample_dir,
        f"resample.strategy={strategy}",
        f"resample.majority={majority}",
        "resample.target=500",
    )
    assert result["before"] == BEFORE
    assert result["after"] == after
    assert result["validation"] == VALIDATION  # never resampled
    written = read_beats("fold.parquet")
    assert written.counts() == after
    assert written.length == 187


def test_synthetic_beats_are_new_and_marked(heart, sample_dir):
    run(heart, sample_dir, "resample.strategy=smote", "resample.target=400")
    fold = read_beats("fold.parquet")
    synthetic = fold.record == ""
    assert synthetic.sum() == (400 - 315) + (400 - 270) + (400 - 315)  # S, F, Q; V is cut
    assert (fold.sample[synthetic] == -1).all()
    original = load_split(sample_dir, "random", "train")
    # A SMOTE beat lies between two real beats of its class, and is none of them.
    new = fold.x[synthetic][:5]
    assert not any(np.any(np.all(original.x == beat, axis=1)) for beat in new)


@pytest.mark.parametrize("strategy", ["adasyn", "smote_tomek"])
def test_adaptive_and_cleaning_strategies_land_near_the_target(heart, sample_dir, strategy):
    result = run(heart, sample_dir, f"resample.strategy={strategy}", "resample.target=500")
    assert result["before"] == BEFORE
    for name, count in result["after"].items():
        assert 440 <= count <= 560, (name, count)
    if strategy == "smote_tomek":  # Tomek links only remove beats
        assert all(count <= 500 for count in result["after"].values())


def test_table_shows_counts_before_and_after(heart, sample_dir):
    out = heart(
        "resample",
        "--set",
        f"data.dir={sample_dir}",
        "--set",
        "resample.strategy=random",
        "--set",
        "resample.target=321",
        "--out",
        "f.parquet",
    ).stdout
    assert "training fold, resample.strategy = random" in out
    assert "│ F     │    270 │             321 │" in out
    assert "wrote f.parquet" in out


def test_smote_needs_more_beats_than_neighbours(heart, sample_dir):
    result = heart(
        "resample",
        "--set",
        f"data.dir={sample_dir}",
        "--set",
        "data.split=inter-patient",
        "--set",
        "resample.strategy=smote",
        "--set",
        "resample.k_neighbors=8",
        "--out",
        "x.parquet",
        expect=2,
    )
    assert result.stderr.strip() == (
        "error: resample.k_neighbors: class Q has 4 beats in the training fold; smote needs at "
        'least k_neighbors + 1 = 9; lower resample.k_neighbors or use strategy = "random"'
    )
    assert not Path("x.parquet").exists()


def test_dropping_n_when_one_other_class_is_left(heart, sample_dir, tmp_path):
    data = tmp_path / "two"
    (data / "random").mkdir(parents=True)
    # the sample's manifest, listing the checksum of the split file made up here
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    beats = load_split(sample_dir, "random", "train")
    write_beats(data / "random" / "train.parquet", beats.subset(np.flatnonzero(beats.y <= 1)))
    manifest["files"] = {"random/train.parquet": sha256_file(data / "random" / "train.parquet")}
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = heart(
        "resample",
        "--set",
        f"data.dir={data}",
        "--set",
        "resample.strategy=random",
        "--set",
        "resample.majority=drop",
        expect=2,
    )
    assert result.stderr.strip() == (
        'error: resample.majority: "drop" removes class N and leaves 1 class in the training '
        'fold; use "cap" or "keep"'
    )


def test_refuses_to_oversample_a_class_of_few_real_beats(heart, sample_dir):
    # The inter-patient sample holds all 8 Q beats of DS1; after the validation carve-out
    # the training fold has 4, which "random" would copy up to 300.
    args = ["resample", "--set", f"data.dir={sample_dir}", "--set", "data.split=inter-patient"]
    args += ["--set", "resample.strategy=random", "--set", "resample.target=300"]
    args += ["--out", "x.parquet"]
    result = heart(*args, expect=2)
    assert result.stderr.strip() == (
        "error: resample.min_beats: class Q has 4 real beats in the training fold, fewer than "
        "min_beats = 50, and random would oversample it to 300; drop or merge it (data.classes "
        '= {Q = "drop"}) or lower resample.min_beats'
    )
    assert not Path("x.parquet").exists()
    # Lowering the limit allows it; dropping Q (AAMI EC57 practice) is the better way.
    lowered = heart.json(*args, "--set", "resample.min_beats=4")
    assert lowered["after"]["Q"] == 300
    dropped = heart.json(*args, "--set", 'data.classes={Q = "drop"}')
    assert list(dropped["after"]) == ["N", "S", "V", "F"]
    assert dropped["after"] == {"N": 300, "S": 300, "V": 300, "F": 300}
    assert Path("x.parquet").exists()


def test_merging_a_class_relabels_its_beats(heart, sample_dir):
    args = ["resample", "--set", f"data.dir={sample_dir}", "--set", "resample.strategy=none"]
    plain = heart.json(*args)
    merged = heart.json(*args, "--set", 'data.classes={F = "V", Q = "drop"}')
    assert list(merged["before"]) == ["N", "S", "V"]
    assert merged["before"]["V"] == plain["before"]["V"] + plain["before"]["F"]
    assert merged["before"]["N"] == plain["before"]["N"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{X = "drop"}', 'data.classes: no class "X" in the data (classes: N, S, V, F, Q)'),
        ('{F = "Z"}', 'data.classes.F: "Z" is not a class that stays; use "drop" or one of '),
        ('{N = "drop", S = "drop", V = "drop", F = "drop"}', "data.classes: leaves 1 class"),
        ('{Q = "Q"}', '--set data.classes: class Q: use "drop" or the name of another class'),
        ('{Q = "F", F = "V"}', '--set data.classes: class Q: "F" is itself dropped or merged'),
    ],
)
def test_bad_class_mappings_are_one_line(heart, sample_dir, value, message):
    args = ["resample", "--set", f"data.dir={sample_dir}", "--set", f"data.classes={value}"]
    result = heart(*args, expect=2)
    assert result.stderr.startswith(f"error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
