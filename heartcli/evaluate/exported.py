"""`heart evaluate FILE.onnx|FILE.pte`: an exported model's figures on a split's test part.

The file is loaded as `heart predict` loads it (checked against its ``model_card.json``)
and run in its own runtime (ONNX Runtime, ExecuTorch); the figures come from the same
:func:`heartcli.metrics.metrics` and data checks as a run's evaluation, on the same test
part (by default the dataset and split the card names), so an int8 file's figures compare
one to one with its run's ``eval.json``. Nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heartcli.errors import DataError, UsageError


def evaluate_export(path: Path, data: Path | None, split: str | None) -> dict[str, Any]:
    """Metrics of the exported model at ``path`` on the test part (or a beat file)."""
    from heartcli.data.dataset import apply_classes, load_split, read_beats
    from heartcli.metrics import metrics
    from heartcli.model.inference import model_inputs
    from heartcli.predict.load import load_model, read_card

    if path.suffix.lower() not in (".onnx", ".pte"):
        raise UsageError(f"{path}: evaluate takes a run folder or an exported .onnx or .pte")
    model = load_model(path)
    training = read_card(path).get("training") or {}
    source = data if data is not None else Path(str(training.get("data_dir") or "data/mitbih"))
    split_name = split or str(training.get("split") or "random")
    if source.is_file():
        beats = apply_classes(read_beats(source), model.class_map)
        description, split_used = str(source), None
    elif (source / "manifest.json").exists():
        beats = load_split(source, split_name, "test", classes=model.class_map)
        description, split_used = f"{source} (split {split_name}, test part)", split_name
    else:
        raise DataError(f"{source}: no dataset here; pass --data DIR (a `heart fetch` folder)")
    _check(model, beats, description)
    inputs = model_inputs(beats.x, beats.rhythm, model.rhythm, description)
    proba = model.proba(inputs)
    result: dict[str, Any] = {
        "model": str(path),
        "model_kind": model.kind,
        "data": description,
        "split": split_used,
    }
    result.update(metrics(beats.y, proba.argmax(axis=1), model.classes, proba, beats.record))
    return result


def _check(model: Any, beats: Any, description: str) -> None:
    """The checks of a run's evaluation (heartcli.evaluate.check_data), for a model file."""
    if beats.length != model.input_length:
        raise DataError(
            f"{description}: beats have {beats.length} samples but {model.path.name} takes "
            f"{model.input_length}; use data built like its training data"
        )
    if list(beats.classes) != list(model.classes):
        raise DataError(
            f"{description}: classes {','.join(beats.classes)} differ from the model's "
            f"{','.join(model.classes)}; use data with the model's class set"
        )
    if len(beats) == 0:
        raise DataError(f"{description}: no beats to evaluate")
    if not np.all(np.isfinite(beats.x)):
        raise DataError(f"{description}: a beat has a NaN or infinite value; drop or repair it")
