"""Training: the folds, the class-balancing sampler, the arithmetic, the recipe, the loop.

- :mod:`heartcli.training.folds`: validation carved from the training split, ``[resample]``
- :mod:`heartcli.training.sampler`: which beats each epoch draws (balancing without copies)
- :mod:`heartcli.training.precision`: device and bf16 autocast / fp32
- :mod:`heartcli.training.recipe`: optimizer, LR schedule, augmentation
- :mod:`heartcli.training.loop`: :func:`train`, step by step
- :mod:`heartcli.training.crossval`: ``--folds K`` cross-validation, then the final run
- :mod:`heartcli.training.command`: :func:`train_command`, `heart train` as a service: the
  run folder claimed (or resumed), the MLflow store checked, then :func:`train` or the folds

:func:`flush_subnormals` runs first in :func:`train`, before torch starts its worker threads,
which copy the setting: without it the seed CNN's backward pass runs 6x slower on x86.
"""

from heartcli.training.command import train_command
from heartcli.training.folds import Folds, carve_validation, prepare_folds
from heartcli.training.loop import (
    EpochInfo,
    TrainingDiverged,
    TrainResult,
    flush_subnormals,
    train,
)

__all__ = [
    "EpochInfo",
    "Folds",
    "TrainResult",
    "TrainingDiverged",
    "carve_validation",
    "flush_subnormals",
    "prepare_folds",
    "train",
    "train_command",
]
