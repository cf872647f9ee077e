"""`[data] classes` end to end: an inter-patient run without Q, AAMI figures, card, predict."""

from __future__ import annotations

import json

import numpy as np
import wfdb
from conftest import SAMPLE, quick_args

from heartcli.data.dataset import load_split


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
