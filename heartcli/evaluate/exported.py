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

from heartcli.errors import DataError, UsageError
from heartcli.evaluate.held_out import check_beats, held_out_beats


def evaluate_export(path: Path, data: Path | None, split: str | None) -> dict[str, Any]:
    """Metrics of the exported model at ``path`` on the test part (or a beat file)."""
    from heartcli.data.dataset import MANIFEST
    from heartcli.metrics import metrics
    from heartcli.model.inference import model_inputs
    from heartcli.predict.load import load_model, read_card

    if path.suffix.lower() not in (".onnx", ".pte"):
        raise UsageError(f"{path}: evaluate takes a run folder or an exported .onnx or .pte")
    model = load_model(path)
    training = read_card(path).get("training") or {}
    source = data if data is not None else Path(str(training.get("data_dir") or "data/mitbih"))
    split_name = split or str(training.get("split") or "random")
    if not source.is_file() and not (source / MANIFEST).exists():
        raise DataError(f"{source}: no dataset here; pass --data DIR (a `heart fetch` folder)")
    beats, description, split_used = held_out_beats(source, split_name, model.class_map)
    check_beats(
        beats, description, model.path.name, model.input_length, model.classes, name_row=False
    )
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
