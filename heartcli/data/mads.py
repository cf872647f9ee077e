"""The built beat datasets through the mads-datasets protocol, for MADS course notebooks.

mads-datasets streams any object with ``__len__`` and ``__getitem__`` returning ``(x, y)``
through its ``BaseDatastreamer``; its factories hand out ``{"train": ..., "valid": ...}``.
This module offers both for a folder written by ``heart fetch`` (or ``--import``)::

    from heartcli.data.mads import HeartBeatsFactory, stack_batch

    factory = HeartBeatsFactory("data/mitbih", split="random")
    streamers = factory.create_datastreamer(batchsize=32, preprocessor=stack_batch)
    x, y = next(streamers["train"].stream())  # x: [32, 187, 1] float32, y: [32] int64

"valid" is the split's test part: the course stack validates on it; the training loop of
`heart train` instead carves its validation set out of the training part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from mads_datasets.base import AbstractDatasetFactory, BaseDatastreamer
from mads_datasets.settings import DatasetSettings

from heartcli.data.dataset import MANIFEST, BeatSet, load_split, read_manifest

MITDB_URL = "https://physionet.org/files/mitdb/1.0.0/"


class BeatDataset:
    """One split part as a mads-datasets dataset: item ``i`` is ``(x [187, 1], y)`` tensors.

    ``channels_last=False`` gives ``x`` as ``[1, 187]`` (the layout of a Conv1d input).
    """

    def __init__(self, beats: BeatSet, *, channels_last: bool = True) -> None:
        self.classes = list(beats.classes)
        x = torch.from_numpy(beats.x.copy())
        self.x = x.unsqueeze(-1) if channels_last else x.unsqueeze(1)
        self.y = torch.from_numpy(beats.y.copy())

    @classmethod
    def from_dir(
        cls, data_dir: str | Path, split: str = "random", part: str = "train", **kwargs: Any
    ) -> BeatDataset:
        return cls(load_split(data_dir, split, part), **kwargs)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    def __repr__(self) -> str:
        return f"BeatDataset (len {len(self)}, classes {self.classes})"


def stack_batch(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """The preprocessor for ``BaseDatastreamer``: a list of ``(x, y)`` into two batch tensors."""
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.stack(ys)


class HeartBeatsFactory(AbstractDatasetFactory[DatasetSettings]):
    """A mads-datasets factory over a dataset folder that `heart fetch` wrote.

    It downloads nothing itself: ``heart fetch`` gets, verifies and builds the data.
    """

    def __init__(
        self, data_dir: str | Path, split: str = "random", *, channels_last: bool = True
    ) -> None:
        settings = DatasetSettings(
            dataset_url=MITDB_URL,
            filename=Path(MANIFEST),
            name=split,
            unzip=False,
        )
        super().__init__(settings, datadir=Path(data_dir))
        self.split = split
        self.channels_last = channels_last

    def download_data(self) -> None:
        read_manifest(self.datadir)  # raises with the `heart fetch` hint when absent

    def create_dataset(self, *args: Any, **kwargs: Any) -> Mapping[str, BeatDataset]:
        return {
            name: BeatDataset.from_dir(
                self.datadir, self.split, part, channels_last=self.channels_last
            )
            for name, part in (("train", "train"), ("valid", "test"))
        }


def datastreamers(
    data_dir: str | Path,
    split: str = "random",
    batchsize: int = 32,
    preprocessor: Callable[..., Any] | None = stack_batch,
) -> Mapping[str, BaseDatastreamer]:
    """``{"train": ..., "valid": ...}`` endless batch streams of ``(x, y)`` tensors."""
    factory = HeartBeatsFactory(data_dir, split)
    return factory.create_datastreamer(batchsize=batchsize, preprocessor=preprocessor)


__all__ = ["BeatDataset", "HeartBeatsFactory", "datastreamers", "stack_batch"]
