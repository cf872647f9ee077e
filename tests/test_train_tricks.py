"""`[train] ema` (a moving average of the weights) and `[train] label_smoothing`, through the
CLI on the bundled sample's real beats."""

from __future__ import annotations

import csv

import torch
from conftest import quick_args
from safetensors.torch import load_file

# The quick-start CNN on the sample (conftest), 150 beats a class, every class kept, cosine.
QUICK = quick_args("resample.target=150", "resample.min_beats=1", "train.scheduler=cosine")


def checkpoint(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


def test_ema_saves_and_validates_the_average_and_resumes_it(heart, tmp_path):
    heart("-q", "train", *QUICK, "--name", "ema", "--set", "train.ema=0.9")
    run = tmp_path / "runs" / "ema"
    ckpt, saved = checkpoint(run), load_file(str(run / "model.safetensors"))
    steps = ckpt["ema"]["steps"]
    assert steps > 5
    averaged, raw = ckpt["ema"]["model"], ckpt["model"]
    conv = next(k for k in raw if k.endswith("weight") and raw[k].dim() == 3)
    # The run's weights are the average's, which differ from the optimizer's raw weights.
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not torch.allclose(averaged[conv], raw[conv])
    # A resume continues the average from the checkpoint, step count and all.
    heart("-q", "train", "--resume", run, "--set", "train.epochs=2")
    assert checkpoint(run)["ema"]["steps"] == 2 * steps

    heart("-q", "train", *QUICK, "--name", "plain")
    assert checkpoint(tmp_path / "runs" / "plain")["ema"] is None


def test_label_smoothing_changes_the_training_loss(heart, tmp_path):
    losses = {}
    for smoothing in ("0.0", "0.3"):
        name = f"ls{smoothing}"
        heart(
            "-q", "train", *QUICK, "--name", name, "--set", f"train.label_smoothing={smoothing}",
            "--set", "train.epochs=2", "--set", "train.warmup_epochs=0",
            "--set", "train.epoch_beats=4000",
        )  # fmt: skip
        with open(tmp_path / "runs" / name / "history.csv", newline="") as fh:
            losses[smoothing] = float(list(csv.DictReader(fh))[-1]["train_loss"])
    # Same seed, same draws: the smoothed targets (0.3 spread over all classes) keep
    # the loss well above the plain one (measured: 1.35 against 0.98).
    assert losses["0.3"] > losses["0.0"] + 0.15


def test_bad_trick_values_are_refused(heart):
    for key, value in (("train.ema", "1.0"), ("train.label_smoothing", "-0.1")):
        result = heart("train", *QUICK, "--set", f"{key}={value}", expect=2)
        assert result.stderr.strip().startswith(f"error: --set {key}") or key in result.stderr
