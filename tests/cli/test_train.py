"""`heart train` end to end on the bundled sample: run folder, resume, tracking, honesty."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
from conftest import QUICKSTART, SAMPLE, error_line, quick_args
from safetensors.torch import load_file

from heartcli.config import load_config
from heartcli.data.dataset import load_split
from heartcli.model.load import load_run
from heartcli.training import TrainingDiverged, train


def quick(data_dir: Path, *sets: str, tracking: bool = False) -> list[str]:
    """QUICK (conftest: the quick-start CNN, 200 beats a class) on ``data_dir``, 2 epochs."""
    return quick_args("train.epochs=2", *sets, data=data_dir, tracking=tracking)


def figures(history: list[dict]) -> list[tuple]:
    """What must be identical between runs (timings are not)."""
    return [
        (h["epoch"], h["train_loss"], h["val_loss"], h["val_macro_f1"], h["lr"]) for h in history
    ]


@pytest.mark.slow
def test_train_resume_evaluate_end_to_end_with_mlflow(heart, sample_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    summary = heart.json(
        "train", *quick(sample_dir, f"tracking.uri={store}", tracking=True), "--name", "qs"
    )
    run = Path("runs/qs")
    assert summary["status"] == "completed"
    assert summary["epochs_run"] == 2
    assert summary["run_dir"] == str(run)
    assert summary["parameters"] == 17_437
    for name in (
        "config.toml",
        "model.safetensors",
        "checkpoint.pt",
        "manifest.json",
        "history.csv",
        "curves.png",
        "val_confusion.png",
    ):
        assert (run / name).stat().st_size > 0, name

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == ["N", "S", "V", "F", "Q"]
    assert manifest["input_length"] == 187
    assert manifest["sampling_rate_hz"] == 120.0
    assert manifest["data"]["split"] == "random"
    assert len(manifest["data"]["manifest_sha256"]) == 64
    assert manifest["data"]["resampled_counts"] == {c: 200 for c in "NSVFQ"}
    # Validation is carved stratified from the training split (10% of every class).
    assert manifest["data"]["val_counts"] == {"N": 100, "S": 35, "V": 45, "F": 30, "Q": 35}
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["best_epoch"] in (1, 2)
    assert manifest["metrics"]["val_macro_f1"] == summary["best_val_macro_f1"]

    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_macro_f1", "val_recall_F", "lr"}

    # The saved config runs as it is, and the checkpoint loads with weights_only.
    assert load_config(run / "config.toml").train.epochs == 2
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    loaded = load_run(run)
    assert not loaded.model.training
    assert loaded.classes == ["N", "S", "V", "F", "Q"]
    assert loaded.input_length == 187

    # MLflow: the run, its params, per-epoch metrics and artifacts, in the tmp store.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("quickstart")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_id == summary["tracking_run_id"]
    assert found.info.status == "FINISHED"
    assert found.data.params["train.batch_size"] == "64"
    assert found.data.params["resample.strategy"] == "random"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_macro_f1")]
    assert steps == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.toml", "curves.png", "val_confusion.png"} <= artifacts

    # Resume: one more epoch on top of the checkpoint, logged to the same MLflow run.
    out = heart("train", "--resume", run, "--set", "train.epochs=3")
    assert "resuming at epoch 3 of 3" in out.stderr
    assert "completed: best val macro-F1" in out.stdout
    # The summary counts all three epochs and the time of both invocations, as the manifest does.
    total = json.loads((run / "manifest.json").read_text())["timings"]["seconds"]
    said = re.search(r"\(3 epochs, ([0-9.]+) s,", " ".join(out.stdout.split()))
    assert said and abs(float(said.group(1)) - total) < 0.06
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_macro_f1")]
    assert steps == [1, 2, 3]

    # Evaluate on the run's own test part.
    result = heart.json("evaluate", run)
    assert result["split"] == "random"
    assert result["data"] == f"{sample_dir} (split random, test part)"
    assert result["n"] == 615
    assert 0.2 < result["accuracy"] <= 1.0
    assert set(result["per_class"]["F"]) >= {"precision", "recall", "f1", "support"}
    assert result["per_class"]["F"]["support"] == 75
    assert json.loads((run / "eval.json").read_text())["macro_f1"] == result["macro_f1"]
    assert (run / "confusion.png").stat().st_size > 0
    # ... and the held-out figures join the run's MLflow record.
    logged = client.get_run(found.info.run_id)
    assert logged.data.metrics["test_macro_f1"] == pytest.approx(result["macro_f1"])
    assert logged.data.metrics["test_f1_F"] == pytest.approx(result["per_class"]["F"]["f1"])
    assert {"eval.json", "confusion.png"} <= {
        a.path for a in client.list_artifacts(found.info.run_id)
    }


def test_same_config_twice_and_resumed_runs_have_identical_histories(tmp_path, sample_dir):
    def config(epochs: int):
        return load_config(
            QUICKSTART,
            [
                f"data.dir={sample_dir}",
                "resample.target=150",
                f"train.epochs={epochs}",
                "tracking.enabled=false",
                # a fixed count: "auto" follows the load of other programs (another pytest
                # worker), and another thread count sums the gradients in another order
                "train.threads=1",
            ],
        )

    straight = train(config(2), tmp_path / "a")
    first = train(config(1), tmp_path / "c")
    assert figures(first.history) == figures(straight.history)[:1]  # same config, same epoch
    resumed = train(config(2), tmp_path / "c", resume=True)
    assert figures(resumed.history) == figures(straight.history)


def test_the_test_split_is_never_read_during_training(heart, sample_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    for split in ("random", "inter-patient"):
        (data / split / "test.parquet").write_bytes(b"not parquet: training must not read this")
    summary = heart.json(
        "train",
        *quick(data, "data.split=inter-patient", "train.epochs=1", "resample.strategy=none"),
        "--name",
        "ip",
    )
    assert summary["status"] == "completed"
    # Inter-patient validation holds whole records that are not in the training fold.
    manifest = json.loads(Path("runs/ip/manifest.json").read_text())
    val_records = set(manifest["data"]["val_records"])
    assert val_records
    from heartcli.data.dataset import load_split

    everything = load_split(data, "inter-patient", "train")
    val_beats = sum(str(r) in val_records for r in everything.record)
    assert val_beats == sum(manifest["data"]["val_counts"].values())
    assert sum(manifest["data"]["train_counts"].values()) == len(everything) - val_beats
    # Only `heart evaluate` reads the test part, and it says so.
    result = heart("evaluate", "runs/ip", expect=1)
    # (the damaged file is not the one the dataset's manifest lists: refused before reading)
    assert result.stderr.startswith(
        f"error: {data}/inter-patient/test.parquet: is not the file manifest.json lists"
    )


def test_interrupt_keeps_the_best_checkpoint_and_pruning_stops(tmp_path, sample_dir):
    cfg = load_config(
        QUICKSTART,
        [f"data.dir={sample_dir}", "resample.target=100", "tracking.enabled=false"],
    )

    def interrupt(info):
        if info.epoch == 2:
            raise KeyboardInterrupt

    result = train(cfg, tmp_path / "stop", on_epoch=interrupt)
    assert result.status == "interrupted"
    assert result.epochs_run == 2
    manifest = json.loads((tmp_path / "stop" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert load_run(tmp_path / "stop").manifest["best_epoch"] == result.best_epoch
    assert torch.load(tmp_path / "stop" / "checkpoint.pt", weights_only=True)["epoch"] == 2

    pruned = train(cfg, tmp_path / "prune", on_epoch=lambda info: info.epoch >= 1)
    assert (pruned.status, pruned.epochs_run) == ("pruned", 1)


def test_nested_tracking_under_a_parent_run(tmp_path, sample_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) land here, not in the repo
    store = f"sqlite:///{tmp_path / 'nested.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp_id = client.create_experiment("tune")
    parent = client.create_run(exp_id).info.run_id
    # The environment variable wins over [tracking] uri.
    cfg = load_config(
        QUICKSTART,
        [
            f"data.dir={sample_dir}",
            "resample.target=100",
            "train.epochs=1",
            "tracking.experiment=tune",
            "tracking.uri=sqlite:///nowhere/else.db",
        ],
    )
    result = train(cfg, tmp_path / "child", tracking_parent=parent)
    child = client.get_run(result.tracking_run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.experiment_id == exp_id


def test_nan_loss_raises_training_diverged(tmp_path, sample_dir):
    cfg = load_config(
        QUICKSTART,
        [
            f"data.dir={sample_dir}",
            "resample.target=100",
            "train.epochs=1",
            "train.lr=1e30",
            "tracking.enabled=false",
        ],
    )
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss became nan"):
        train(cfg, tmp_path / "nan")
    assert json.loads((tmp_path / "nan" / "manifest.json").read_text())["status"] == "failed"


def test_existing_run_name_is_refused(heart, sample_dir):
    heart("train", *quick(sample_dir, "train.epochs=1"), "--name", "one")
    result = heart("train", *quick(sample_dir), "--name", "one", expect=2)
    assert result.stderr.strip() == (
        "error: runs/one already exists (the name is in use); choose another --name or "
        "continue it with `heart train --resume runs/one`"
    )


def test_bad_training_data_is_one_line(heart, sample_dir, tmp_path):
    import numpy as np

    from heartcli.data.dataset import load_split, write_beats
    from heartcli.io import sha256_file

    data = tmp_path / "nan"
    (data / "random").mkdir(parents=True)
    # the sample's manifest, listing the checksum of the beats made up here
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    beats = load_split(sample_dir, "random", "train")
    beats.x[7, 3] = np.nan
    write_beats(data / "random" / "train.parquet", beats)
    manifest["files"] = {"random/train.parquet": sha256_file(data / "random" / "train.parquet")}
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = heart("train", *quick(data), "--name", "bad", expect=1)
    assert result.stderr.strip() == (
        f"error: {data}/random/train.parquet: row 7 has a NaN or infinite value; drop or repair it"
    )
    assert not Path("runs/bad").exists()
    (data / "manifest.json").write_text('{"input_length": 187, "spl')  # cut off mid-write
    result = heart("train", *quick(data), "--name", "bad", expect=1)
    assert result.stderr.strip() == (
        f"error: {data}/manifest.json: truncated or unreadable; rebuild it with `heart fetch`"
    )
    (data / "manifest.json").unlink()
    result = heart("train", *quick(data), "--name", "bad", expect=1)
    assert result.stderr.strip().startswith(f"error: {data}: no dataset here")
    assert not Path("runs/bad").exists()


SUBNORMAL_PROBE = """
import sys, torch
from heartcli.config import load_config
from heartcli.training import train
if sys.argv[1] == "train":
    cfg = load_config(sys.argv[2], [f"data.dir={sys.argv[3]}", "resample.target=50",
                                    "train.epochs=1", "train.threads=2", "tracking.enabled=false"])
    train(cfg, sys.argv[4])
else:
    torch.set_num_threads(2)
# 1e-39 is subnormal in float32; 4M elements are split across both threads.
x = torch.full((1 << 22,), 1e-39)
print(int(((x * 1.0) != 0).sum()))
"""


@pytest.mark.slow
def test_training_flushes_subnormals_in_every_torch_thread(tmp_path, sample_dir):
    """Subnormals made the seed CNN's backward pass 6x slower; train() turns on flush-to-zero."""

    def nonzero(*args: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", SUBNORMAL_PROBE, *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        return int(out.stdout.split()[-1])

    assert nonzero("plain") == 1 << 22  # without it, every subnormal survives
    assert nonzero("train", str(QUICKSTART), str(sample_dir), str(tmp_path / "run")) == 0


def test_a_name_is_free_again_after_a_start_was_killed(heart, sample_dir):
    # what a `heart train` killed (SIGKILL) before its manifest leaves: its folder, its
    # lock (released by the kernel) and config.toml; the name is free, not "in use"
    left = Path("runs/killed")
    left.mkdir(parents=True)
    (left / ".lock").write_text("12345\n")
    (left / "config.toml").write_text("[train]\n")
    done = heart.json("train", *quick(sample_dir, "train.epochs=1"), "--name", "killed")
    assert done["status"] == "completed" and not (left / ".lock").exists()
    mine = Path("runs/mine")
    mine.mkdir()
    (mine / "notes.txt").write_text("not heart's")
    r = heart("train", *quick(sample_dir), "--name", "mine", expect=2)
    assert r.stderr.strip() == (
        "error: runs/mine exists and holds files that are not a heart run; choose another --name"
    )
    assert (mine / "notes.txt").read_text() == "not heart's"


# --------------------------------------------- moved here from tests/test_classes.py


@pytest.mark.slow
def test_inter_patient_run_without_q(heart, tmp_path, mitdb_dir):
    # AAMI EC57 practice: Q (8 beats in DS1, 7 in DS2) is dropped from training and scoring.
    # With Q kept, [resample] would refuse to copy its 4 training beats (min_beats = 50).
    heart(
        "-q", "train", "--name", "noq",
        *quick_args("data.split=inter-patient", 'data.classes={Q = "drop"}'),
    )  # fmt: skip
    run = tmp_path / "runs" / "noq"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == ["N", "S", "V", "F"]

    result = heart.json("evaluate", run)
    test = load_split(SAMPLE, "inter-patient", "test")
    assert result["classes"] == ["N", "S", "V", "F"]
    assert result["n"] == len(test) - int((test.y == 4).sum()) == 525
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (4, 4)
    assert result["aami"]["scored_beats"] == 525 and result["aami"]["excluded_beats"] == 0
    assert set(result["aami"]["per_record"]) == set(test.record)

    export = tmp_path / "export"
    heart("-q", "export", run, "--format", "onnx", "--out", export)
    card = json.loads((export / "model_card.json").read_text())
    assert card["class_map"] == {"Q": "drop"}
    assert card["evaluation"]["aami"]["jk_index"] == result["aami"]["jk_index"]
    markdown = (export / "MODEL_CARD.md").read_text()
    assert "AAMI EC57 figures on 525 scored beats" in markdown and "jκ" in markdown

    # Record 107 is paced (Q): its reference Q beats are outside the model's classes and
    # leave the agreement table; its other beats are scored.
    ann = wfdb.rdann(str(mitdb_dir / "107"), "atr")
    q_beats = sum(s in "/fQ" for s in ann.symbol[:-1])  # the last annotation is no row
    predicted = heart.json("predict", export / "model.onnx", mitdb_dir / "107")
    assert predicted["classes"] == ["N", "S", "V", "F"]
    agreement = predicted["agreement"]
    assert agreement["beats"] == predicted["beats"] - q_beats
    assert sum(c["support"] for c in agreement["per_class"].values()) == agreement["beats"]


# --------------------------------------------- moved here from tests/test_faults.py


def test_truncated_config_is_refused_on_resume(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.batch_size=64"), "--name", "cut")
    run = Path("runs/cut")
    config = run / "config.toml"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    cut = config.read_bytes()
    result = heart("train", "--resume", run, "--set", "train.epochs=3", expect=1)
    assert result.stderr.startswith(f"error: {config}: does not match the checksum")
    assert len(result.stderr.strip().splitlines()) == 1
    assert config.read_bytes() == cut  # nothing rewrote it
    assert json.loads((run / "manifest.json").read_text())["epochs_run"] == 2


def test_resume_with_set_writes_the_config_back_and_nothing_else_rewrites_it(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "more")
    run = Path("runs/more")
    config = run / "config.toml"
    before = config.stat().st_mtime_ns
    heart("-q", "train", "--resume", run)  # nothing to change: config.toml untouched
    assert config.stat().st_mtime_ns == before
    heart("-q", "train", "--resume", run, "--set", "train.epochs=2")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["epochs_run"] == 2
    assert "epochs = 2" in config.read_text()
    import hashlib

    assert manifest["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    heart("-q", "train", "--resume", run, "--set", "train.epochs=3")  # its own --set is fine


# --------------------------------------------- moved here from tests/test_hardening.py


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize(
    "name", ["", "a\nb", "tab\there", "x" * 300, "../up", "-dash", "sp ace", ".."]
)
def test_unsafe_run_names_are_refused(heart, sample_dir, name):
    line = error_line(heart("train", *quick(sample_dir), "--name", name, expect=None), 2)
    assert line.startswith("error: --name")
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_broken_mlflow_store_leaves_no_run_folder(heart, sample_dir, tmp_path):
    (tmp_path / "broken.db").write_bytes(b"this is not a sqlite database" * 100)
    uri = f"sqlite:///{tmp_path / 'broken.db'}"
    args = quick(sample_dir, f"tracking.uri={uri}", tracking=True)
    line = error_line(heart("train", *args, "--name", "b", expect=None), 1)
    assert line.startswith("error: tracking: cannot log to MLflow")
    assert not Path("runs/b").exists()
    # the name is free again: the same run trains once tracking is fixed
    heart("-q", "train", *quick(sample_dir), "--name", "b")
    assert json.loads(Path("runs/b/manifest.json").read_text())["status"] == "completed"


def test_unreachable_mlflow_server_fails_in_seconds(heart, sample_dir):
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    result = heart(
        "train", *quick(sample_dir, f"tracking.uri={uri}", tracking=True), "-n", "u", expect=None
    )
    assert time.perf_counter() - started < 30
    line = error_line(result, 1)
    assert line.startswith(f"error: tracking: cannot reach MLflow at {uri}")
    assert not Path("runs/u").exists()


def test_unreachable_mlflow_server_falls_back_to_local_when_asked(heart, sample_dir):
    uri = f"http://127.0.0.1:{closed_port()}"
    sets = (f"tracking.uri={uri}", "tracking.on_error=local")
    result = heart("train", *quick(sample_dir, *sets, tracking=True), "-n", "l")
    assert f"MLflow at {uri} is unreachable" in result.stderr
    manifest = json.loads(Path("runs/l/manifest.json").read_text())
    assert manifest["tracking"]["uri"].startswith("sqlite:///")
    assert manifest["tracking"]["run_id"]
    assert Path("mlflow.db").exists()


def test_every_file_of_a_run_has_the_same_permissions(heart, sample_dir):
    heart("-q", "train", *quick(sample_dir, "train.epochs=1"), "--name", "p")
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in Path("runs/p").iterdir() if p.is_file()
    }
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


# --------------------------------------------- moved here from tests/test_train_tricks.py


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
