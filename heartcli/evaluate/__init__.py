"""`heart evaluate` of a run: its best model on a split's test part (or a beat file), the
figures of :mod:`heartcli.metrics`, written to the run as eval.json and confusion.png and
added to the run's MLflow run.

:func:`evaluate` is the service behind `heart evaluate RUN|FILE`: it picks the data
(:mod:`heartcli.evaluate.held_out`), scores a run folder here or an exported file with
:mod:`heartcli.evaluate.exported`, and returns what the CLI renders. Whole records scored
as EC57 prescribes are :mod:`heartcli.evaluate.records` and :mod:`heartcli.evaluate.ec57`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.data.dataset import BeatSet
from heartcli.evaluate.held_out import check_data, held_out_beats
from heartcli.io import write_json
from heartcli.metrics import metrics

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun


@dataclass
class Evaluation:
    """What `heart evaluate` shows: the figures, the files written, the MLflow line."""

    result: dict[str, Any]
    written: list[Path] = field(default_factory=list)  # eval.json, confusion.png of a run
    tracking: str | None = None  # where the figures went in MLflow (a run), or why not


def evaluate(target: Path, data: Path | None = None, split: str | None = None) -> Evaluation:
    """`heart evaluate`: a run folder's best model, or an exported .onnx / .pte, on the test
    part of ``data`` (default: the run's, or the card's, dataset) and ``split``, or on the
    beat file ``data``. A run gets eval.json and confusion.png and its MLflow run the
    figures; an exported file's evaluation writes nothing."""
    from heartcli.model.load import load_run
    from heartcli.model.runs import CONFUSION, EVAL
    from heartcli.tracking import log_evaluation

    if target.is_file():
        from heartcli.evaluate.exported import evaluate_export

        return Evaluation(evaluate_export(target, data, split))
    run = load_run(target)
    source = data if data is not None else Path(run.config.data.dir)
    beats, description, split_used = held_out_beats(
        source, split or run.config.data.split, run.config.data.classes
    )
    result = evaluate_run(run, beats, description=description, split=split_used)
    written = [run.path / EVAL, run.path / CONFUSION]
    return Evaluation(result, written, log_evaluation(run.manifest, result, written))


FINISHED = ("completed", "early_stopped", "budget", "pruned")


def evaluate_run(
    run: LoadedRun,
    data: BeatSet,
    *,
    description: str,
    split: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Metrics of a run's best model on ``data``; with ``write``, eval.json and confusion.png.

    ``description`` says where the beats come from (shown and stored as ``data``); ``split``
    names the split (stored as ``split``; null for a file outside a dataset).
    """
    from heartcli import plots
    from heartcli.model.inference import model_inputs, torch_proba, uses_rhythm
    from heartcli.model.runs import CONFUSION, EVAL
    from heartcli.threads import ThreadPolicy

    check_data(run, data, description)
    inputs = model_inputs(data.x, data.rhythm, uses_rhythm(run.model), description)
    ThreadPolicy("auto").start(wait=False)  # the CPUs this process may use (affinity, quota)
    proba = torch_proba(run.model, inputs)
    status = run.manifest.get("status")
    result = {"run": str(run.path), "run_status": status, "data": description, "split": split}
    result.update(metrics(data.y, proba.argmax(axis=1), run.classes, proba, data.record))
    if status not in FINISHED:
        result["warning"] = (
            f"the run is {status}, not finished: these are the figures of its best epoch so "
            f"far; finish it with `heart train --resume {run.path}`"
        )
    if write:
        path = Path(run.path)
        plots.confusion(
            np.asarray(result["confusion_matrix"]),
            run.classes,
            path / CONFUSION,
            f"{path.name} on {description}",
        )
        write_json(path / EVAL, result)
    return result
