"""The models `heart predict` and `heart evaluate` run: a run folder (PyTorch), or an
exported ``.onnx`` or ``.pte`` checked against the ``model_card.json`` beside it.

The card is checked against the model (listed, same SHA-256, input length, number of
classes, and for a ``.pte`` its planned input shapes) before anything is predicted, so a
file of another model is one error line; an ONNX model runs in ONNX Runtime without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.config import RHYTHM_FEATURES
from heartcli.data.dataset import training_lead
from heartcli.errors import DataError, UsageError
from heartcli.export.guard import CARD_JSON
from heartcli.io import read_json, sha256_file
from heartcli.model.inference import Runner, batched, onnx_runner, onnx_session


@dataclass
class Model:
    """A model ready to predict: beats float32 [n, input_length] -> probabilities [n, k]."""

    path: Path
    kind: str  # "run", "onnx" or "pte"
    classes: list[str]
    input_length: int
    lead: str  # lead of the training data: "channel0" or "MLII"
    proba_fn: Runner = field(repr=False)  # one batch of beats -> probabilities
    class_map: dict[str, str] = field(default_factory=dict)  # [data] classes of the training

    def reference_index(self, labels: np.ndarray, source: list[str]) -> np.ndarray:
        """Reference labels (indices into ``source`` classes) as indices into the model's
        classes, through its ``[data] classes`` map; -1 where the model has no such class."""
        lookup = []
        for name in source:
            name = self.class_map.get(name, name)
            lookup.append(self.classes.index(name) if name in self.classes else -1)
        table = np.asarray(lookup, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        return np.where(labels >= 0, table[np.clip(labels, 0, len(table) - 1)], -1)

    # [min, max] of the training beats: the run's manifest records it; an exported model's
    # card says "min-max normalised to [0, 1]".
    input_range: tuple[float, float] = (0.0, 1.0)

    rhythm: bool = False  # takes the rhythm features as a second input

    # A run folder's PyTorch module (what `--adapt` copies and adapts); None for an export.
    module: Any = field(default=None, repr=False)
    seed: int = 0  # the run's [train] seed: --adapt labels seeds its fine-tuning with it

    def proba(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Probabilities for the model's inputs (beats, and rhythm for a rhythm model)."""
        if len(inputs[0]) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return batched(self.proba_fn, inputs).astype(np.float32, copy=False)


def load_model(path: str | Path) -> Model:
    """A run folder or an exported .onnx or .pte (validated against its model card)."""
    path = Path(path)
    if path.is_dir():
        return _load_run_model(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        return load_onnx(path)
    if path.suffix.lower() == ".pte":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        from heartcli.predict.load import load_pte

        return load_pte(path)
    if not path.exists():
        raise UsageError(f"{path}: no such run folder, .onnx or .pte file")
    raise UsageError(
        f"{path}: MODEL must be a run folder (heart train) or an exported .onnx or .pte "
        "(heart export)"
    )


def _load_run_model(path: Path) -> Model:
    from heartcli.model.inference import torch_runner, uses_rhythm
    from heartcli.model.load import load_run

    run = load_run(path)
    run.model.eval()
    proba = torch_runner(run.model)
    lead = training_lead(run.manifest, run.config.data.lead)
    lo, hi = (run.manifest.get("data") or {}).get("input_range") or (0.0, 1.0)
    return Model(
        path,
        "run",
        list(run.classes),
        run.input_length,
        lead,
        proba,
        dict(run.config.data.classes),
        (float(lo), float(hi)),
        uses_rhythm(run.model),
        run.model,
        int(run.config.train.seed),
    )


def read_card(model_path: Path) -> dict[str, Any]:
    card_path = model_path.parent / CARD_JSON
    if not card_path.is_file():
        raise DataError(
            f"{model_path}: no {CARD_JSON} beside it; use the folder `heart export` wrote"
        )
    card = read_json(card_path, "export the model again")
    if not isinstance(card, dict) or not isinstance(card.get("classes"), list):
        raise DataError(f"{card_path}: not a heart model card; export the model again")
    return card


def check_card_entry(path: Path, card: dict[str, Any]) -> None:
    """The exported file must be one the card lists, with the SHA-256 the card gives it."""
    card_path = path.parent / CARD_JSON
    entry = next((f for f in card.get("files", []) if f.get("file") == path.name), None)
    if entry is None:
        raise DataError(f"{card_path} does not list {path.name}; use the card exported with it")
    if entry.get("sha256") != sha256_file(path):
        raise DataError(
            f"{path.name} does not match {card_path} (SHA-256 differs); "
            "use the files of one export together, or export again"
        )


def load_onnx(path: Path) -> Model:
    """An exported ONNX model, after checking that its card describes exactly this file."""
    card = read_card(path)
    session = onnx_session(path)
    check_card_entry(path, card)
    card_path = path.parent / CARD_JSON
    classes = [str(c) for c in card["classes"]]
    length = int((card.get("input") or {}).get("length", -1))
    inputs, outputs = session.get_inputs(), session.get_outputs()
    rhythm = bool(card.get("rhythm_input"))
    if len(inputs) != (2 if rhythm else 1):
        raise DataError(
            f"{card_path} does not match {path.name}: the card says {2 if rhythm else 1} "
            f"input(s), the model takes {len(inputs)}; export again"
        )
    in_shape = list(inputs[0].shape)
    out_shape = list(outputs[0].shape) if outputs else []
    model_length = in_shape[1] if len(in_shape) == 2 else None
    model_classes = out_shape[1] if len(out_shape) == 2 else None
    if model_length != length or model_classes != len(classes):
        raise DataError(
            f"{card_path} does not match {path.name}: the card says {length} samples in, "
            f"{len(classes)} classes out; the model takes {model_length} and gives "
            f"{model_classes}; export again"
        )
    lead = str((card.get("input") or {}).get("lead", "channel0"))
    proba = onnx_runner(session)
    class_map = {str(k): str(v) for k, v in (card.get("class_map") or {}).items()}
    return Model(path, "onnx", classes, length, lead, proba, class_map, rhythm=rhythm)


def load_pte(path: Path) -> Model:
    """An exported .pte, after checking that its card describes exactly this program."""
    from heartcli.export.pte import pte_runner, pte_signature, require_executorch

    require_executorch()
    card = read_card(path)
    check_card_entry(path, card)
    card_path = path.parent / CARD_JSON
    classes = [str(c) for c in card["classes"]]
    length = int((card.get("input") or {}).get("length", -1))
    rhythm = bool(card.get("rhythm_input"))
    shapes = pte_signature(path)
    wanted = [length, len(RHYTHM_FEATURES)] if rhythm else [length]
    got = [s[1] if len(s) == 2 else None for s in shapes]
    if got != wanted:
        raise DataError(
            f"{path.name} takes inputs of {got} values per beat but {card_path} says {wanted}; "
            "the program belongs to another model: export again"
        )
    lead = str((card.get("input") or {}).get("lead", "channel0"))
    class_map = {str(k): str(v) for k, v in (card.get("class_map") or {}).items()}
    return Model(path, "pte", classes, length, lead, pte_runner(path), class_map, rhythm=rhythm)
