"""`heart train`'s fast recipe: bf16/fp32 precision, the class-balancing sampler, the budget."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quick_args

from heartcli.data.dataset import load_split, read_beats
from heartcli.training import carve_validation
from heartcli.training.precision import native_bf16

NATIVE_BF16 = native_bf16(torch.device("cpu"))


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def manifest(run: str) -> dict:
    return json.loads((Path(run) / "manifest.json").read_text())


# --------------------------------------------------------------------------- the sampler


def test_random_resampling_draws_the_class_mix_without_copies(heart, sample_dir):
    """An epoch draws `target` beats a class: all of a small class, a new subset of a big one."""
    result = heart.json(
        "resample",
        "--set",
        f"data.dir={sample_dir}",
        "--set",
        "resample.strategy=random",
        "--set",
        "resample.target=500",
        "--out",
        "epoch.parquet",
    )
    assert result["after"] == {c: 500 for c in "NSVFQ"}
    drawn = read_beats("epoch.parquet")
    assert drawn.counts() == result["after"]
    # Which real beats were drawn, and how often: (record, sample) names a beat.
    fold = load_split(sample_dir, "random", "train")
    train_idx, _ = carve_validation(fold, 0.1, 42)
    fold = fold.subset(train_idx)
    times = Counter(zip(drawn.record, drawn.sample, strict=True))
    for c, name in enumerate(fold.classes):
        beats = {(r, s) for r, s, y in zip(fold.record, fold.sample, fold.y, strict=True) if y == c}
        seen = {key: n for key, n in times.items() if key in beats}
        if len(beats) >= 500:  # N (900): a subset, each beat at most once
            assert len(seen) == 500 and set(seen.values()) == {1}, name
        else:  # S 315, V 405, F 270, Q 315: every beat once, then part of a second round
            assert set(seen) == beats, name
            assert set(seen.values()) == {1, 2}, name
            assert sum(n == 2 for n in seen.values()) == 500 - len(beats), name


def test_epoch_beats_scales_the_mix(heart, sample_dir):
    result = heart.json(
        "resample",
        "--set",
        f"data.dir={sample_dir}",
        "--set",
        "resample.strategy=random",
        "--set",
        "resample.majority=keep",
        "--set",
        "resample.target=300",
        "--set",
        "train.epoch_beats=1000",
        "--out",
        "epoch.parquet",
    )
    # N keeps its 900 beats, the rest 300 each: 2,100 scaled to 1,000.
    assert result["after"] == {"N": 428, "S": 143, "V": 143, "F": 143, "Q": 143}
    assert read_beats("epoch.parquet").counts() == result["after"]


def test_resume_replays_the_same_draws_and_keeps_the_recipe(heart, sample_dir):
    # on 1 thread: "auto" follows the load of other programs (another pytest worker), and
    # another thread count sums the gradients in another order
    straight = heart.json("train", *quick(sample_dir, "train.epochs=3", "train.threads=1"),
                          "--name", "a")  # fmt: skip
    heart("train", *quick(sample_dir, "train.epochs=2", "train.threads=1"), "--name", "b")
    resumed = heart.json("train", "--resume", "runs/b", "--set", "train.epochs=3")

    def figures(summary: dict) -> list[tuple]:
        return [(h["epoch"], h["train_loss"], h["val_macro_f1"]) for h in summary["history"]]

    assert figures(resumed) == figures(straight)
    # The sampler and the arithmetic are part of the run: a resume may not change them.
    for key, value in (("resample.target", "300"), ("train.precision", "fp32")):
        if key == "train.precision" and manifest("runs/b")["precision"] == "fp32":
            value = "bf16" if NATIVE_BF16 else value
            if not NATIVE_BF16:
                continue
        result = heart("train", "--resume", "runs/b", "--set", f"{key}={value}", expect=2)
        assert result.stderr.startswith("error: "), result.stderr
        assert "a resumed run keeps its" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- precision


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_precision_is_recorded_and_the_model_evaluates_and_exports(heart, sample_dir, precision):
    if precision == "bf16" and not NATIVE_BF16:
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    out = heart("train", *quick(sample_dir, f"train.precision={precision}"), "--name", "p")
    ran = "bf16" if precision == "auto" and NATIVE_BF16 else precision
    ran = "fp32" if ran == "auto" else ran
    assert manifest("runs/p")["precision"] == ran
    assert f"(cpu, {ran}, " in out.stderr  # the header says which arithmetic ran
    evaluated = heart.json("evaluate", "runs/p")
    assert 0.0 < evaluated["macro_f1"] <= 1.0
    exported = heart.json("export", "runs/p", "--format", "onnx")
    (onnx,) = exported["files"]
    assert onnx["file"] == "model.onnx" and exported["parity"]["passed"] == ["model.onnx"]
    assert onnx["parity"]["max_abs_diff"] <= 1e-4


def test_bf16_without_native_support_is_refused(heart, sample_dir):
    if NATIVE_BF16:
        pytest.skip("this CPU does bf16 natively; the refusal is for CPUs that do not")
    result = heart("train", *quick(sample_dir, "train.precision=bf16"), "--name", "x", expect=2)
    assert result.stderr.strip().startswith('error: train.precision: "bf16" is not supported')
    assert not Path("runs/x").exists()


# --------------------------------------------------------------------------- the budget


def test_max_minutes_stops_after_the_epoch_that_crosses_it(heart, sample_dir):
    summary = heart.json(
        "train", *quick(sample_dir, "train.epochs=5"), "--name", "b", "--max-minutes", "0.0001"
    )
    assert (summary["status"], summary["epochs_run"]) == ("budget", 1)
    assert summary["seconds_to_best"] == round(summary["history"][0]["elapsed"], 2) > 0
    saved = manifest("runs/b")
    assert saved["status"] == "budget"
    assert saved["timings"]["seconds_to_best"] == round(summary["history"][0]["elapsed"], 2)
    assert Path("runs/b/model.safetensors").stat().st_size > 0
    assert heart.json("evaluate", "runs/b")["macro_f1"] > 0


@pytest.mark.parametrize("value", ["-1", "0", "soon", "nan", "inf"])
def test_max_minutes_must_be_a_positive_number(heart, sample_dir, value):
    result = heart("train", *quick(sample_dir), "--name", "x", "--max-minutes", value, expect=2)
    assert result.stderr.strip() == (
        f"error: --max-minutes {value!r}: expected a positive number of minutes, e.g. 15"
    )
    assert not Path("runs/x").exists()


def test_augmentation_changes_training_but_never_validation(heart, sample_dir):
    plain = heart.json("train", *quick(sample_dir, "train.epochs=1"), "--name", "plain")
    noisy = heart.json(
        "train",
        *quick(sample_dir, "train.epochs=1", "augment.noise=0.05", "augment.time_shift=3"),
        "--name",
        "noisy",
    )
    assert noisy["history"][0]["train_loss"] != plain["history"][0]["train_loss"]
    # Same validation beats, untouched: the counts match and the run is reproducible.
    again = heart.json(
        "train",
        *quick(sample_dir, "train.epochs=1", "augment.noise=0.05", "augment.time_shift=3"),
        "--name",
        "again",
    )
    assert again["history"][0]["val_macro_f1"] == noisy["history"][0]["val_macro_f1"]
    assert (
        manifest("runs/noisy")["data"]["val_counts"] == manifest("runs/plain")["data"]["val_counts"]
    )
    assert np.isfinite(noisy["history"][0]["val_loss"])
