"""`heart evaluate` of a run: its best model on a split's test part (or a beat file), the
figures of :mod:`heartcli.metrics`, written to the run as eval.json and confusion.png.

The other two ways in: an exported file (:mod:`heartcli.evaluate.exported`) and whole
records scored as EC57 prescribes (:mod:`heartcli.evaluate.records`, :mod:`heartcli.evaluate.ec57`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.data.dataset import BeatSet
from heartcli.errors import DataError
from heartcli.io import write_json
from heartcli.metrics import metrics

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun


def check_data(run: LoadedRun, data: BeatSet, description: str) -> None:
    """The data must fit the model: same beat length, same class set, finite values."""
    if data.length != run.input_length:
        raise DataError(
            f"{description}: beats have {data.length} samples but the model of {run.path} "
            f"takes {run.input_length}; use data built like its training data"
        )
    if list(data.classes) != list(run.classes):
        raise DataError(
            f"{description}: classes {','.join(data.classes)} differ from the model's "
            f"{','.join(run.classes)}; use data with the model's class set"
        )
    if len(data) == 0:
        raise DataError(f"{description}: no beats to evaluate")
    if not np.all(np.isfinite(data.x)):
        row = int(np.argwhere(~np.isfinite(data.x))[0][0])
        raise DataError(f"{description}: row {row} has a NaN or infinite value; drop or repair it")


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
