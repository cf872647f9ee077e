"""Training: the folds, the class-balancing sampler, the arithmetic, the recipe, the loop.

- :mod:`heartcli.training.folds`: validation carved from the training split, ``[resample]``
- :mod:`heartcli.training.sampler`: which beats each epoch draws (balancing without copies)
- :mod:`heartcli.training.precision`: device and bf16 autocast / fp32
- :mod:`heartcli.training.recipe`: optimizer, LR schedule, augmentation
- :mod:`heartcli.training.loop`: :func:`train`, step by step

:func:`flush_subnormals` runs first in :func:`train`, before torch starts its worker threads,
which copy the setting: without it the seed CNN's backward pass runs 6x slower on x86.
"""

from heartcli.training.folds import Folds, carve_validation, prepare_folds
from heartcli.training.loop import (
    EpochInfo,
    NoProgress,
    TrainingDiverged,
    TrainProgress,
    TrainResult,
    flush_subnormals,
    train,
)

__all__ = [
    "EpochInfo",
    "Folds",
    "NoProgress",
    "TrainProgress",
    "TrainResult",
    "TrainingDiverged",
    "carve_validation",
    "flush_subnormals",
    "prepare_folds",
    "train",
]
