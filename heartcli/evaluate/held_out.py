"""The beats `heart evaluate` scores, and their checks: a beat file as it is, or a dataset's
split test part, with ``[data] classes`` applied; each must fit the model (beat length,
class set, finite values) before anything runs. Shared by a run's evaluation
(:mod:`heartcli.evaluate`) and an exported file's (:mod:`heartcli.evaluate.exported`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heartcli.data.dataset import BeatSet
from heartcli.errors import DataError

if TYPE_CHECKING:
    from heartcli.model.runs import LoadedRun


def check_data(run: LoadedRun, data: BeatSet, description: str) -> None:
    """The data must fit the run's model (:func:`check_beats`)."""
    check_beats(data, description, f"the model of {run.path}", run.input_length, run.classes)


def check_beats(
    data: BeatSet,
    description: str,
    model: str,
    length: int,
    classes: Sequence[str],
    *,
    name_row: bool = True,
) -> None:
    """The data must fit the model: same beat length, same class set, finite values.

    ``model`` names the model in the messages; ``name_row``: say which row is not finite.
    """
    if data.length != length:
        raise DataError(
            f"{description}: beats have {data.length} samples but {model} takes {length}; "
            "use data built like its training data"
        )
    if list(data.classes) != list(classes):
        raise DataError(
            f"{description}: classes {','.join(data.classes)} differ from the model's "
            f"{','.join(classes)}; use data with the model's class set"
        )
    if len(data) == 0:
        raise DataError(f"{description}: no beats to evaluate")
    if not np.all(np.isfinite(data.x)):
        row = int(np.argwhere(~np.isfinite(data.x))[0][0])
        where = f"row {row}" if name_row else "a beat"
        raise DataError(f"{description}: {where} has a NaN or infinite value; drop or repair it")


def held_out_beats(source: Path, split: str, classes: Any) -> tuple[BeatSet, str, str | None]:
    """The beats to score: a beat file as it is, or a dataset folder's ``split`` test part,
    with ``[data] classes`` applied: (beats, where they come from, the split or None)."""
    from heartcli.data.dataset import apply_classes, load_split, read_beats

    if source.is_file():
        return apply_classes(read_beats(source), classes), str(source), None
    beats = load_split(source, split, "test", classes=classes)
    return beats, f"{source} (split {split}, test part)", split
