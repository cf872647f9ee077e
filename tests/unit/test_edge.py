"""The device side of `heart export` through the CLI: static int8 (ONNX QDQ and ExecuTorch
PT2E), `--format pte`, the costs on the card, `heart predict` with a .pte, `heart evaluate`
of an exported file, and the bad inputs. One tiny run (examples/tiny.toml, 12 epochs on
the bundled sample) is trained and exported once per session.

The ExecuTorch tests need the extra heart[edge] (executorch); without it they are skipped
with that reason, and the ONNX tests still run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLES, REPO, SAMPLE, Exported, Heart, evaluate_and_export

from heartcli.export.int8 import INT8_KEYS

pytestmark = pytest.mark.slow  # the device recipe's export costs a minute and more

RECIPE = EXAMPLES / "tiny.toml"  # the device recipe (not conftest's TINY)
HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(
    not HAS_EXECUTORCH, reason="ExecuTorch is not installed: pip install 'heart[edge]'"
)


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """examples/tiny.toml, 12 epochs on the sample, evaluated; exported to ONNX (and .pte)
    with static int8."""
    runs = tmp_path_factory.mktemp("edge") / "runs"
    Heart()(
        "-q", "train", "--config", RECIPE, "--name", "tiny",
        "--set", f"data.dir={SAMPLE}", "--set", f"train.runs_dir={runs}",
        "--set", "train.epochs=12", "--set", "resample.target=300",
        "--set", "tracking.enabled=false",
    )  # fmt: skip
    formats = ["--format", "onnx"] + (["--format", "pte"] if HAS_EXECUTORCH else [])
    return evaluate_and_export(
        runs / "tiny", runs.parent / "export", *formats, "--quantize", "static"
    )


def test_tiny_recipe_fits_the_device_budget(edge):
    costs = edge.summary["costs"]
    assert costs["parameters"] <= 30_000
    card = json.loads((edge.export / "model_card.json").read_text())
    assert card["training"]["model"]["separable"] is True
    assert 0 < costs["macs_per_beat"] < 2_000_000
    assert costs["peak_activation_bytes_float32"] == 4 * costs["peak_activation_bytes_int8"] > 0


def test_static_int8_onnx_scored_against_float_with_calibration_from_training(edge):
    s = edge.summary
    files = {f["file"]: f for f in s["files"]}
    assert "model.onnx" in s["parity"]["passed"]
    q8 = files["model.int8.onnx"]
    assert q8["format"] == "onnx-int8" and "quantize_static" in q8["exporter"]
    scores = {q["file"]: q for q in s["int8"]}
    onnx8 = scores["model.int8.onnx"]
    cal = onnx8["calibration"]  # the int8 file's entry says how it was calibrated
    assert "train part" in cal["source"] and "test part" not in cal["source"]
    assert sum(cal["per_class"].values()) == cal["beats"] and min(cal["per_class"].values()) > 0
    assert onnx8["mode"] == "static" and onnx8["method"] == q8["exporter"]
    assert q8["bytes"] < files["model.onnx"]["bytes"] / 2
    eval_json = json.loads((edge.run / "eval.json").read_text())
    assert onnx8["macro_f1_float"] == pytest.approx(eval_json["macro_f1"], abs=1e-9)
    assert onnx8["test_beats"] == eval_json["n"] == 615
    assert onnx8["within_tolerance"] == (onnx8["macro_f1_loss"] <= 0.005)
    md = (edge.export / "MODEL_CARD.md").read_text()
    assert "## Int8" in md and "## Costs" in md and "multiply-adds per beat" in md
    for f in s["files"]:  # every file is timed in its runtime at batch 1 and 256, 1 thread
        lat = f["latency"]
        assert lat["threads"] == 1 and lat["batch_1_us_per_beat"] > 0
        assert lat["batch_256_us_per_beat"] > 0
    assert files["model.int8.onnx"]["latency"]["runtime"] == "onnxruntime"


@needs_executorch
def test_pte_float_and_int8_pass_parity_in_executorch(edge):
    s = edge.summary
    files = {f["file"]: f for f in s["files"]}
    assert "model.pte" in s["parity"]["passed"]
    p = files["model.pte"]["parity"]
    assert p["max_abs_diff"] <= 1e-4 and p["argmax_agreement"] == 1.0 and p["beats"] == 1000
    q8 = files["model.int8.pte"]
    assert "PT2E" in q8["program"] and q8["latency"]["runtime"] == "executorch"
    assert q8["agreement"]["beats"] == 1000 and q8["agreement"]["argmax_agreement"] >= 0.9
    assert q8["bytes"] < files["model.pte"]["bytes"]
    for name in ("model.pte", "model.int8.pte"):  # the 4-D twin: features and head delegated
        assert files[name]["delegated_ops"].startswith("2 XNNPACK partition(s)")
    scores = {q["file"]: q for q in s["int8"]}
    assert set(scores) == {"model.int8.onnx", "model.int8.pte"}
    # one result shape on the card, whatever the format
    card = json.loads((edge.export / "model_card.json").read_text())
    assert card["int8"] == s["int8"] and "quantized" not in card
    assert all(tuple(q) == INT8_KEYS for q in card["int8"])
    assert scores["model.int8.pte"]["method"] == q8["program"]
    assert scores["model.int8.pte"]["calibration"] == scores["model.int8.onnx"]["calibration"]


@needs_executorch
def test_predict_with_a_pte_matches_the_onnx(heart, edge, tmp_path):
    beats = SAMPLE / "random" / "test.parquet"
    via_pte = heart.json("predict", edge.export / "model.pte", beats, "--out", tmp_path / "a.csv")
    via_onnx = heart.json("predict", edge.export / "model.onnx", beats, "--out", tmp_path / "b.csv")
    assert via_pte["model_kind"] == "pte" and via_pte["beats"] == via_onnx["beats"] == 615
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == (
        (tmp_path / "b.csv").read_text().splitlines()[0]
    )
    a = [line.split(",")[:3] for line in (tmp_path / "a.csv").read_text().splitlines()]
    b = [line.split(",")[:3] for line in (tmp_path / "b.csv").read_text().splitlines()]
    assert a == b


def test_evaluate_an_exported_file_through_the_run_path(heart, edge):
    run_eval = json.loads((edge.run / "eval.json").read_text())
    flt = heart.json("evaluate", edge.export / "model.onnx")
    assert flt["model_kind"] == "onnx" and flt["n"] == run_eval["n"]
    assert flt["macro_f1"] == pytest.approx(run_eval["macro_f1"], abs=1e-9)
    assert flt["confusion_matrix"] == run_eval["confusion_matrix"]
    q8 = heart.json("evaluate", edge.export / "model.int8.onnx")
    score = next(q for q in edge.summary["int8"] if q["file"] == "model.int8.onnx")
    assert q8["macro_f1"] == pytest.approx(score["macro_f1_int8"], abs=1e-9)
    if HAS_EXECUTORCH:
        pte8 = heart.json("evaluate", edge.export / "model.int8.pte")
        score = next(q for q in edge.summary["int8"] if q["file"] == "model.int8.pte")
        assert pte8["model_kind"] == "pte"
        assert pte8["macro_f1"] == pytest.approx(score["macro_f1_int8"], abs=1e-9)


def test_pte_without_executorch_is_one_line_exit_2(edge, tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'executorch' or name.startswith('executorch.'):\n"
        "            raise ImportError('blocked by the test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{REPO}", "NO_COLOR": "1"}
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "heartcli",
            "export",
            str(edge.run),
            "--format",
            "pte",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --format pte needs ExecuTorch")
    assert "pip install 'heart[edge]'" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_fewer_calibration_beats_than_classes_is_one_line(heart, edge, tmp_path):
    r = heart(
        "export",
        edge.run,
        "--format",
        "onnx",
        "--quantize",
        "static",
        "--set",
        "export.calibration_beats=3",
        "--out",
        tmp_path / "o",
        expect=2,
    )
    assert "error: export.calibration_beats = 3 is fewer than the model's 5 classes" in r.stderr
    assert not (tmp_path / "o").exists()


def test_calibration_method_is_a_config_key_and_named_on_the_card(heart, edge, tmp_path):
    from typing import get_args

    from heartcli.config import ExportConfig
    from heartcli.export.int8 import CALIBRATIONS

    # the schema's names and the exporter's table are the same list
    assert set(get_args(ExportConfig.model_fields["calibration"].annotation)) == set(CALIBRATIONS)
    out = tmp_path / "percentile"
    s = heart.json(
        "export", edge.run, "--format", "onnx", "--quantize", "static",
        "--set", 'export.calibration="percentile"', "--out", out,
    )  # fmt: skip
    q8 = {f["file"]: f for f in s["files"]}["model.int8.onnx"]
    assert q8["calibration_method"] == "percentile" and "Percentile calibration" in q8["exporter"]
    default = {f["file"]: f for f in edge.summary["files"]}["model.int8.onnx"]
    assert default["calibration_method"] == "minmax"
    r = heart(
        "export", edge.run, "--format", "onnx", "--quantize", "static",
        "--set", 'export.calibration="kl"', "--out", tmp_path / "bad", expect=2,
    )  # fmt: skip
    assert "export.calibration" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@needs_executorch
def test_pte_of_another_shape_is_refused_by_predict(heart, edge, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(edge.export, other)
    card = json.loads((other / "model_card.json").read_text())
    card["input"]["length"] = 250  # the card of a model that takes 250-sample beats
    (other / "model_card.json").write_text(json.dumps(card))
    beats = SAMPLE / "random" / "test.parquet"
    r = heart("predict", other / "model.pte", beats, "--out", tmp_path / "p.csv", expect=1)
    assert "model.pte takes inputs of [187] values per beat but" in r.stderr
    assert "says [250]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_int8_loss_beyond_tolerance_is_written_flagged_and_strict_fails(heart, edge, tmp_path):
    # one calibration beat per class: the activation ranges miss most beats, the int8
    # model loses accuracy; a tolerance of 0 flags any loss
    args = [
        "export",
        edge.run,
        "--format",
        "onnx",
        "--quantize",
        "static",
        "--set",
        "export.calibration_beats=5",
        "--set",
        "export.int8_tolerance=0",
    ]
    loose = heart.json(*args, "--out", tmp_path / "loose")
    q = loose["int8"][0]
    assert q["macro_f1_loss"] > 0 and q["within_tolerance"] is False
    assert loose["int8_within_tolerance"] is False
    md = (tmp_path / "loose" / "MODEL_CARD.md").read_text()
    assert "beyond tolerance" in md and "color:red" in md
    shown = heart(*args, "--out", tmp_path / "shown")
    assert "BEYOND TOLERANCE" in shown.stdout
    strict = heart(*args, "--strict", "--out", tmp_path / "strict", expect=1)
    assert "error: model.int8.onnx loses" in strict.stderr
    assert (tmp_path / "strict" / "model.int8.onnx").exists()  # written, and flagged
    assert "BEYOND TOLERANCE" in strict.stdout  # the result is shown before the error
    # --strict fails through heart's one error path: with --json one document on stdout,
    # the error and its exit code, with the export's summary
    both = heart("--json", *args, "--strict", "--out", tmp_path / "json", expect=1)
    document = json.loads(both.stdout)
    assert document["exit_code"] == 1 and document["error"].startswith("model.int8.onnx loses")
    assert document["error"].endswith(
        "it was written and the card says so; --strict fails the export"
    )
    assert document["result"]["int8_within_tolerance"] is False
    assert (tmp_path / "json" / "model.int8.onnx").exists()


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("rhythm", [False, True])
def test_the_4d_twin_computes_what_the_cnn_computes(attention, rhythm):
    """The exports write the 4-D twin: every layout of the CNN (self-attention, the rhythm
    head, an ensemble of two) gives the same logits on real beats through it."""
    import numpy as np
    import torch

    from heartcli.config import ModelConfig
    from heartcli.data.dataset import load_split
    from heartcli.export.twin import device_module
    from heartcli.model.ensemble import ensemble_module
    from heartcli.model.network import build_model

    beats = load_split(SAMPLE, "random", "test")
    x = torch.from_numpy(np.ascontiguousarray(beats.x[:64], dtype=np.float32))
    args = (x, torch.randn(64, 9)) if rhythm else (x,)
    torch.manual_seed(0)
    cfg = ModelConfig(attention=attention, attention_heads=4, rhythm=rhythm)
    members = [build_model(cfg, x.shape[1], 5).eval() for _ in range(2)]
    for net in members:  # batch norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        for module in [members[0], ensemble_module(members)]:
            twin = device_module(module)
            assert not any(isinstance(m, torch.nn.Conv1d) for m in twin.modules())
            torch.testing.assert_close(twin(*args), module(*args), atol=1e-5, rtol=1e-5)


def _with_card_for(folder, name: str) -> None:
    """Make ``folder``'s model card vouch for its ``name`` as it is now (a hand-made card)."""
    import hashlib

    card = json.loads((folder / "model_card.json").read_text())
    for entry in card["files"]:
        if entry["file"] == name:
            entry["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "model_card.json").write_text(json.dumps(card))


@needs_executorch
def test_a_pte_that_outputs_nan_is_refused_like_an_onnx(heart, edge, tmp_path):
    import torch

    from heartcli.export.formats import probability_module
    from heartcli.export.pte import export_pte
    from heartcli.model.load import load_run

    nan = tmp_path / "nan"
    shutil.copytree(edge.export, nan)
    run = load_run(edge.run)
    weight = next(p for n, p in run.model.named_parameters() if n.endswith("weight"))
    with torch.no_grad():
        weight.fill_(float("nan"))  # broken weights, as a diverged run's
    export_pte(probability_module(run.model), (torch.rand(2, 187),), nan / "model.pte")
    _with_card_for(nan, "model.pte")
    beats = SAMPLE / "random" / "test.parquet"
    for args in (("predict", nan / "model.pte", beats), ("evaluate", nan / "model.pte")):
        r = heart(*args, expect=1)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "outputs NaN or inf for 615 of 615 beats" in lines[0], args


@needs_executorch
def test_a_pte_of_random_bytes_is_one_line_and_json(edge, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(edge.export, bad)
    noise = bytearray(random.Random(3).randbytes(20_000))
    noise[4:8] = b"\xa7\xe3\x91\xfc"  # where a program's identifier is: not UTF-8, as most
    (bad / "model.pte").write_bytes(bytes(noise))  # random bytes; ExecuTorch aborted on them
    _with_card_for(bad, "model.pte")
    damaged = tmp_path / "damaged"
    shutil.copytree(edge.export, damaged)
    data = bytearray((damaged / "model.pte").read_bytes())
    data[64::97] = os.urandom(len(data[64::97]))  # a program's header, damaged inside
    (damaged / "model.pte").write_bytes(bytes(data))
    _with_card_for(damaged, "model.pte")
    for folder in (bad, damaged):
        done = subprocess.run(
            [sys.executable, "-m", "heartcli", "--json", "predict", str(folder / "model.pte"),
             str(SAMPLE / "random" / "test.parquet")],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {folder / 'model.pte'}: not ")
        assert "export it again" in lines[0]
        assert json.loads(done.stdout)["exit_code"] == 1
