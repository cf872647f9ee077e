"""The folds a run trains and validates on, carved from the training split only.

Validation comes out first (stratified by class, or whole records for the inter-patient
split, so no patient is on both sides; ``[train] val_records`` picks N whole records, or
names them); ``[resample]`` then applies to what is left. The test split is never read
here. :func:`record_folds` makes the record-wise K folds of `heart train --folds K`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heartcli.config import RHYTHM_FEATURES, HeartConfig
from heartcli.data.dataset import BeatSet, load_split
from heartcli.errors import DataError, UsageError
from heartcli.training.resample import class_weights, epoch_class_counts, resample
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


STRATA = ("S", "V")  # classes every record-wise fold must hold (where the data has them)
DRAWS = 500  # random record assignments tried; the best-stratified one is kept
SYNTHETIC = ("smote", "adasyn", "smote_tomek")


def record_table(beats: BeatSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(record names, record index of every beat, beats per record and class)."""
    if not len(beats) or not all(str(r) for r in beats.record):
        raise UsageError(
            "record-wise validation needs the record of every beat; this data has none "
            "(an import?): build the dataset from the records with `heart fetch`"
        )
    names, codes = np.unique(np.asarray(beats.record, dtype=str), return_inverse=True)
    per_record = np.zeros((len(names), len(beats.classes)), dtype=np.int64)
    np.add.at(per_record, (codes, beats.y), 1)
    return names, codes, per_record


def strata(classes: list[str]) -> list[int]:
    """Indices of S and V (those the classes have); every class when neither is there."""
    found = [classes.index(c) for c in STRATA if c in classes]
    return found or list(range(len(classes)))


def _covered(per_record: np.ndarray, chosen: np.ndarray, wanted: list[int]) -> int:
    """How many of the ``wanted`` classes both sides of the cut hold."""
    inside = per_record[chosen].sum(axis=0)
    outside = per_record.sum(axis=0) - inside
    return int(((inside[wanted] > 0) & (outside[wanted] > 0)).sum())


def pick_val_records(beats: BeatSet, wanted: int | list[str], seed: int) -> np.ndarray:
    """Indices of the validation beats: the named records, or ``wanted`` records drawn so
    that both sides hold S and V beats (then as many classes as possible)."""
    names, codes, per_record = record_table(beats)
    if isinstance(wanted, list):
        unknown = [r for r in wanted if r not in set(names)]
        if unknown:
            raise UsageError(
                f"train.val_records: no record {', '.join(unknown)} in the training split "
                f"(records: {', '.join(names)})"
            )
        if len(set(wanted)) >= len(names):
            raise UsageError("train.val_records: names every training record; leave some")
        return np.flatnonzero(np.isin(names[codes], wanted))
    if not 1 <= wanted < len(names):
        raise UsageError(
            f"train.val_records = {wanted}: the training split has {len(names)} records; "
            f"use 1 to {len(names) - 1}"
        )
    rng = np.random.default_rng(seed)
    must, every = strata(beats.classes), list(range(len(beats.classes)))
    best: tuple[tuple[int, int], np.ndarray] | None = None
    for _ in range(DRAWS):
        chosen = rng.permutation(len(names))[:wanted]
        score = (_covered(per_record, chosen, must), _covered(per_record, chosen, every))
        if best is None or score > best[0]:
            best = (score, chosen)
    assert best is not None
    return np.flatnonzero(np.isin(codes, best[1]))


def record_folds(beats: BeatSet, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint groups of whole records (indices of their beats), every one holding S
    and V beats with S and V left outside it; of ``DRAWS`` balanced assignments, the one
    whose folds share the S and V beats most evenly."""
    names, codes, per_record = record_table(beats)
    if k < 2 or k > len(names):
        raise UsageError(
            f"--folds {k}: the training split has {len(names)} records; use 2 to {len(names)}"
        )
    rng = np.random.default_rng(seed)
    must = strata(beats.classes)
    share = per_record[:, must] / np.maximum(per_record[:, must].sum(axis=0), 1)
    best: tuple[tuple[int, float], list[np.ndarray]] | None = None
    for _ in range(DRAWS):
        groups = np.array_split(rng.permutation(len(names)), k)
        covered = sum(_covered(per_record, g, must) == len(must) for g in groups)
        spread = float(np.std([share[g].sum(axis=0) for g in groups], axis=0).sum())
        score = (covered, -spread)
        if best is None or score > best[0]:
            best = (score, groups)
    assert best is not None
    if best[0][0] < k:
        holders = int((per_record[:, must] > 0).all(axis=1).sum())
        wanted = " and ".join(beats.classes[i] for i in must)
        raise UsageError(
            f"--folds {k}: cannot split {len(names)} records into {k} folds that each hold "
            f"{wanted} beats ({holders} records hold both); use fewer folds"
        )
    return [np.flatnonzero(np.isin(codes, g)) for g in best[1]]


def split_validation(config: HeartConfig, beats: BeatSet) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the training split for ``config``: ``[train] val_records``
    when set, else ``val_fraction`` (whole records for the inter-patient split)."""
    wanted = config.train.val_records
    if wanted:
        val = pick_val_records(beats, wanted, config.train.seed)
        mask = np.ones(len(beats), dtype=bool)
        mask[val] = False
        return np.flatnonzero(mask), val
    return carve_validation(
        beats,
        config.train.val_fraction,
        config.train.seed,
        by_record=config.data.split == "inter-patient",
    )


def check_rhythm(config: HeartConfig, beats: BeatSet) -> None:
    """``[model] rhythm`` needs the rhythm columns, and beats that keep them."""
    if not config.model.rhythm:
        return
    if beats.rhythm is None:
        raise UsageError(
            f"model.rhythm = true: {config.data.dir} (split {config.data.split}) has no rhythm "
            f"columns ({', '.join(RHYTHM_FEATURES)}); build the dataset from the records with "
            "`heart fetch`, or set model.rhythm = false"
        )
    if config.resample.strategy in SYNTHETIC:
        raise UsageError(
            f"model.rhythm = true: resample.strategy {config.resample.strategy} makes beats "
            'without rhythm features; use "random" or "class_weight"'
        )


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
    *,
    validation: bool = True,
) -> Folds:
    """The training split (``[data] classes`` applied), minus a validation fold, with
    [resample] applied to what is left.

    ``random`` resampling copies nothing: the sampler draws each epoch's class mix.
    ``validation=False`` trains on all of it, with an empty validation fold (the final
    run of `heart train --folds`).
    """
    if train_data is None:
        train_data = load_split(
            config.data.dir, config.data.split, "train", classes=config.data.classes
        )
    if not np.all(np.isfinite(train_data.x)):
        row = int(np.argwhere(~np.isfinite(train_data.x))[0][0])
        raise DataError(f"training data: row {row} has a NaN or infinite value; repair the data")
    check_rhythm(config, train_data)
    if not validation:
        val_data = train_data.subset(np.array([], dtype=np.int64))
    elif val_data is None:
        tr, va = split_validation(config, train_data)
        val_data = train_data.subset(va)
        train_data = train_data.subset(tr)
    if (validation and len(val_data) == 0) or len(train_data) == 0:
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
