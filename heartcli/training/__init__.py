"""Training: the folds, the class-balancing sampler, the arithmetic, the recipe, the loop.

- :mod:`heartcli.training.folds`: validation carved from the training split, ``[resample]``
- :mod:`heartcli.training.sampler`: which beats each epoch draws (balancing without copies)
- :mod:`heartcli.training.precision`: device and bf16 autocast / fp32
- :mod:`heartcli.training.recipe`: optimizer, LR schedule, augmentation
- :mod:`heartcli.training.setup`: what the epochs need (model, optimizer, tensors), and the
  state between epochs a checkpoint saves and a resume restores
- :mod:`heartcli.training.epoch`: one epoch, trained and validated (:class:`EpochInfo`)
- :mod:`heartcli.training.record`: the run record: what a run folder holds and writing it
  (config.toml, manifest.json, weights, history.csv, checkpoint.pt, MLflow), resume's reading
- :mod:`heartcli.training.loop`: :func:`train`, step by step
- :mod:`heartcli.training.crossval`: ``--folds K`` cross-validation, then the final run
- :mod:`heartcli.training.command`: :func:`train_command`, `heart train` as a service: the
  run folder claimed (or resumed), the MLflow store checked, then :func:`train` or the folds

:func:`flush_subnormals` runs first in :func:`train`, before torch starts its worker threads,
which copy the setting: without it the seed CNN's backward pass runs 6x slower on x86.
"""

from heartcli.training.command import train_command
from heartcli.training.epoch import EpochInfo, TrainingDiverged
from heartcli.training.folds import Folds, carve_validation, prepare_folds
from heartcli.training.loop import TrainResult, flush_subnormals, train

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
