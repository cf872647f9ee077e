"""The folds a run trains and validates on, carved from the training split only.

Validation comes out first (stratified by class, or whole records for the inter-patient
split, so no patient is on both sides); ``[resample]`` then applies to what is left. The
test split is never read here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heartcli.config import HeartConfig
from heartcli.dataset import BeatSet, load_split
from heartcli.errors import DataError, UsageError
from heartcli.resample import class_weights, epoch_class_counts, resample
from heartcli.training.sampler import EpochSampler


@dataclass
class Folds:
    """The training fold, its sampler and the validation fold, with the counts along the way.

    ``train`` holds each beat once (or the synthetic beats SMOTE/ADASYN made); ``sampler``
    says which of them each epoch visits. ``after`` is one epoch's class mix.
    """

    train: BeatSet
    val: BeatSet
    sampler: EpochSampler
    before: dict[str, int]
    after: dict[str, int]
    weights: np.ndarray | None
    val_records: list[str]


def carve_validation(
    beats: BeatSet, fraction: float, seed: int, *, by_record: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): stratified by class, or whole records when ``by_record``."""
    rng = np.random.default_rng(seed)
    records = np.asarray(beats.record, dtype=object)
    if by_record and len(beats) and all(str(r) for r in records):
        return _carve_records(beats, fraction, rng)
    val: list[np.ndarray] = []
    for c in range(len(beats.classes)):
        idx = np.flatnonzero(beats.y == c)
        if len(idx) < 2:
            continue
        take = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        val.append(rng.permutation(idx)[:take])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    mask = np.ones(len(beats), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _carve_records(
    beats: BeatSet, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Whole records into validation until it holds ``fraction`` of the beats.

    Of 50 shuffles, keep the one whose two folds both cover the most classes (then the one
    closest to the wanted size), so rare classes stay on both sides where the data allows.
    """
    names, codes = np.unique(np.asarray(beats.record, dtype=str), return_inverse=True)
    k = len(beats.classes)
    per_record = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(per_record, (codes, beats.y), 1)
    total = per_record.sum(axis=0)
    wanted = fraction * len(beats)
    best: tuple[tuple[int, float], np.ndarray] | None = None
    for _ in range(50):
        order = rng.permutation(len(names))
        sizes = np.cumsum(per_record[order].sum(axis=1))
        cut = int(np.searchsorted(sizes, wanted)) + 1
        cut = min(max(cut, 1), len(names) - 1)
        chosen = order[:cut]
        val_counts = per_record[chosen].sum(axis=0)
        covered = int(((val_counts > 0) & (total - val_counts > 0)).sum())
        score = (covered, -abs(sizes[cut - 1] - wanted))
        if best is None or score > best[0]:
            best = (score, chosen)
    assert best is not None
    in_val = np.isin(codes, best[1])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def prepare_folds(
    config: HeartConfig,
    train_data: BeatSet | None = None,
    val_data: BeatSet | None = None,
) -> Folds:
    """The training split (``[data] classes`` applied), minus a validation fold, with
    [resample] applied to what is left.

    ``random`` resampling copies nothing: the sampler draws each epoch's class mix.
    """
    if train_data is None:
        train_data = load_split(
            config.data.dir, config.data.split, "train", classes=config.data.classes
        )
    if not np.all(np.isfinite(train_data.x)):
        row = int(np.argwhere(~np.isfinite(train_data.x))[0][0])
        raise DataError(f"training data: row {row} has a NaN or infinite value; repair the data")
    if val_data is None:
        by_record = config.data.split == "inter-patient"
        tr, va = carve_validation(
            train_data, config.train.val_fraction, config.train.seed, by_record=by_record
        )
        val_data = train_data.subset(va)
        train_data = train_data.subset(tr)
    if len(val_data) == 0 or len(train_data) == 0:
        raise UsageError(
            f"train.val_fraction: {len(train_data) + len(val_data)} training beats leave "
            "an empty training or validation fold; use more data"
        )
    if val_data.length != train_data.length or val_data.classes != train_data.classes:
        raise DataError("validation data: beat length or classes differ from the training data")
    fold = resample(train_data, config.resample)
    per_class = epoch_class_counts(fold, config.resample, config.train.epoch_beats)
    sampler = EpochSampler(fold.y, per_class, (config.resample.seed, config.train.seed))
    val_records = sorted({str(r) for r in val_data.record if str(r)})
    return Folds(
        train=fold,
        val=val_data,
        sampler=sampler,
        before=train_data.counts(),
        after={name: int(per_class[i]) for i, name in enumerate(fold.classes)},
        weights=class_weights(train_data, config.resample),
        val_records=val_records,
    )
