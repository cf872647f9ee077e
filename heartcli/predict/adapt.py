"""`--adapt`: a run's model adapted to one recording by the recording's first minutes.

EC57 leaves the first 300 s of every record unscored (its learning period); with
``--adapt`` heart uses them. The model of a run folder is copied and the copy adapted to
that one recording by :mod:`heartcli.model.adapt`; the rest of the recording is classified
by the copy, and the next recording starts again from the model as trained:

* ``signal`` (no labels): the BatchNorm statistics re-estimated on the learning period's
  beats (AdaBN, Li et al. 2016) and, for a rhythm model, the centre of its rhythm
  standardisation re-estimated on them: the recording's own RR normalisation;
* ``labels`` (the patient-specific protocol): the learning period's reference beats (the
  .atr's beat annotations, mapped to the AAMI classes as `heart fetch` maps them, cut as
  every beat is) fine-tune the copy's head, weighted towards the rarer classes. It starts
  from the model as trained, not from the signal-adapted one: on DS1 (two record-wise
  folds, each model on the records it never saw) that did better.

The learning period's beats are those whose R-peak lies before ``learning_period_s`` (the
sample ``round(learning_period_s * fs)``, EC57's start); none of them is ever scored. An
exported .onnx/.pte has its BatchNorm folded and its statistics fixed: adaptation needs the
run folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.data.records import has_annotations
from heartcli.errors import UsageError
from heartcli.predict.inputs import Beats, read_input
from heartcli.predict.load import Model

ADAPT_MODES = ("signal", "labels")
LEARNING_PERIOD_S = 300.0  # EC57's learning period


def protocol(mode: str | None) -> str:
    """The protocol name every output carries: plain, adapt-signal or adapt-labels."""
    return "plain" if mode is None else f"adapt-{mode}"


def check_adapt(mode: str | None, learning_period_s: float, model_path: str | Path) -> None:
    """The usage checks of ``--adapt``, before anything is loaded."""
    if mode is None:
        return
    if mode not in ADAPT_MODES:
        raise UsageError(f"--adapt {mode}: use signal or labels")
    if not (math.isfinite(learning_period_s) and learning_period_s > 0):
        raise UsageError(
            f"--learning-period {learning_period_s:g}: --adapt needs a learning period of "
            "more than 0 seconds (EC57's is 300)"
        )
    path = Path(model_path)
    if not path.is_dir() and path.suffix.lower() in (".onnx", ".pte"):
        raise UsageError(
            f"--adapt: {path.name} is an export, whose BatchNorm statistics and head are fixed "
            "in it; adaptation needs the run folder it was exported from"
        )


def learning_start(fs: float, learning_period_s: float) -> int:
    """The first sample after the learning period, rounded as EC57's start is."""
    return int(learning_period_s * fs + 0.5)


def too_short(name: str, duration_s: float, learning_period_s: float) -> str | None:
    """The one line for a recording not longer than its learning period, or None."""
    if duration_s > learning_period_s:
        return None
    return (
        f"{name}: the recording is {duration_s:.0f} s long, not longer than the learning "
        f"period ({learning_period_s:g} s): nothing would be left to classify after adapting; "
        "lower --learning-period"
    )


class NoLearningBeat(UsageError):
    """A learning period without a single beat (or labelled beat) to adapt to (exit 2)."""


def no_learning_beat(name: str, learning_period_s: float, what: str = "beat") -> str:
    return (
        f"{name}: no {what} in the learning period (the first {learning_period_s:g} s): "
        "nothing to adapt the model to; raise --learning-period or leave out --adapt"
    )


@dataclass
class Adapted:
    """A model adapted to one recording, which of its beats taught it, and how."""

    model: Model
    learning: np.ndarray  # bool per beat: R-peak inside the learning period
    info: dict[str, Any]


def adapt_to_record(model: Model, beats: Beats, mode: str, learning_period_s: float) -> Adapted:
    """``model`` (a run's) adapted to the recording of ``beats`` by its learning period."""
    from heartcli.model import adapt
    from heartcli.model.inference import torch_runner

    if model.module is None:
        raise UsageError(f"--adapt: {model.path} is no run folder; give the run folder")
    if beats.method == "file" or beats.fs is None or beats.duration_s is None:
        raise UsageError(
            f"{beats.source}: --adapt reads the learning period of a WFDB record; give a record "
            "path without extension, not a beat file"
        )
    name = Path(beats.source).name
    short = too_short(name, beats.duration_s, learning_period_s)
    if short:
        raise UsageError(short)
    start = learning_start(beats.fs, learning_period_s)
    learning = beats.sample < start
    if not learning.any():
        raise NoLearningBeat(no_learning_beat(name, learning_period_s))
    t0 = time.perf_counter()
    labelled = _labelled(model, beats, start, learning_period_s) if mode == "labels" else None
    module = adapt.adapted_copy(model.module)
    seen = beats.subset(learning)
    info: dict[str, Any] = {
        "protocol": protocol(mode),
        "learning_period_s": learning_period_s,
        "learning_beats": int(learning.sum()),
    }
    if labelled is None:
        info.update(_adapt_signal(module, seen, model))
    else:
        info.update(_adapt_labels(module, labelled, model))
    info["seconds"] = round(time.perf_counter() - t0, 3)
    adapted = replace(model, proba_fn=torch_runner(module), module=module)
    return Adapted(adapted, learning, info)


def _adapt_signal(module: Any, seen: Beats, model: Model) -> dict[str, Any]:
    """AdaBN, and the rhythm standardisation re-centred, on the learning period's beats."""
    from heartcli.model import adapt

    info = {"batchnorm_layers": adapt.adabn(module, seen.inputs(model)), "rhythm_recentred": 0}
    if model.rhythm and seen.rhythm is not None:
        info["rhythm_recentred"] = adapt.recentre_rhythm(module, seen.rhythm)
    return info


def _adapt_labels(module: Any, labelled: Beats, model: Model) -> dict[str, Any]:
    """The head fine-tuned on the learning period's beats the model has a class for."""
    from heartcli.model import adapt

    assert labelled.reference is not None  # _labelled checked it
    known = np.asarray(labelled.reference >= 0)
    y = labelled.reference[known]
    counts = np.bincount(y, minlength=len(model.classes))
    return {
        "labelled_beats": int(known.sum()),
        "labels": {c: int(n) for c, n in zip(model.classes, counts, strict=True)},
        "fine_tune": adapt.fine_tune(
            module, labelled.subset(known).inputs(model), y, seed=model.seed
        ),
    }


def _labelled(model: Model, beats: Beats, start: int, learning_period_s: float) -> Beats:
    """The learning period's beats with their reference classes: the .atr's own beats, cut
    as every beat is (``beats`` themselves when they are the .atr's)."""
    name = Path(beats.source).name
    if not has_annotations(beats.source):
        raise UsageError(
            f"--adapt labels: {beats.source} has no {name}.atr; the learning period's beats "
            "need their reference labels (use --adapt signal without them)"
        )
    if beats.method != "annotations":
        beats = read_input(beats.source, model, lead=beats.lead or "auto", peaks="annotations")
    labelled = beats.subset(beats.sample < start)
    if labelled.reference is None or not (labelled.reference >= 0).any():
        raise NoLearningBeat(no_learning_beat(name, learning_period_s, "labelled beat"))
    return labelled
