"""Class rebalancing of the training fold (never validation or test).

Strategies (``[resample] strategy``):

- ``none``: the fold as it is.
- ``class_weight``: the fold as it is; the loss weighs class c by n / (k * n_c).
- ``random``: every class to ``target`` beats an epoch, drawn by the training loop's
  sampler (``heartcli.training.sampler``): a fresh random subset of a class above it, whole
  shuffles of a class below it. Nothing is copied; the fold keeps each beat once.
- ``smote`` / ``adasyn``: undersample above ``target`` as ``random`` does, then synthesise
  beats up to ``target`` with SMOTE / ADASYN.
- ``smote_tomek``: ``smote``, then remove Tomek links from every class.

Class 0 (N, the majority) follows ``majority``: ``cap`` treats it like every class but never
oversamples it, ``keep`` leaves it whole, ``drop`` removes it. A class with no beats in the
fold stays empty. Synthetic beats have record "" and sample -1 (and no rhythm columns).

A class with fewer than ``min_beats`` real beats is not oversampled: the command stops
(exit 2) and says to drop or merge it with ``[data] classes`` (AAMI EC57 practice: Q has 8
beats in DS1, which ``random`` would draw some 2,000 times each).

``[train] epoch_beats`` scales an epoch's class mix (:func:`epoch_class_counts`) to that many
beats; 0 keeps the mix's own size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heartcli.config import ResampleConfig
from heartcli.data.dataset import BeatSet
from heartcli.errors import HeartError, UsageError

SYNTHETIC = ("smote", "adasyn", "smote_tomek")


def target_counts(beats: BeatSet, cfg: ResampleConfig) -> dict[int, int]:
    """Beats per class index after resampling (before Tomek-link cleaning)."""
    counts = np.bincount(beats.y, minlength=len(beats.classes))
    if cfg.strategy in ("none", "class_weight"):
        return {c: int(n) for c, n in enumerate(counts)}
    wanted: dict[int, int] = {}
    for c, n in enumerate(counts):
        n = int(n)
        if n == 0:
            wanted[c] = 0
        elif c == 0 and cfg.majority == "keep":
            wanted[c] = n
        elif c == 0 and cfg.majority == "drop":
            wanted[c] = 0
        elif c == 0:
            wanted[c] = min(n, cfg.target)
        else:
            wanted[c] = cfg.target
    present = [c for c, n in wanted.items() if n > 0]
    if len(present) < 2:
        name = beats.classes[0]
        raise UsageError(
            f'resample.majority: "drop" removes class {name} and leaves '
            f'{len(present)} class in the training fold; use "cap" or "keep"'
            if cfg.majority == "drop" and counts[0] > 0
            else f"resample.strategy: the training fold has {len(present)} class; "
            "resampling needs at least 2"
        )
    if cfg.strategy in SYNTHETIC:
        need = cfg.k_neighbors + 1
        for c, n in enumerate(counts):
            if 0 < n < wanted[c] and n < need:
                raise UsageError(
                    f"resample.k_neighbors: class {beats.classes[c]} has {int(n)} beats in the "
                    f"training fold; {cfg.strategy} needs at least k_neighbors + 1 = {need}; "
                    'lower resample.k_neighbors or use strategy = "random"'
                )
    for c, n in enumerate(counts):
        if 0 < n < wanted[c] and n < cfg.min_beats:
            name = beats.classes[c]
            raise UsageError(
                f"resample.min_beats: class {name} has {int(n)} real beats in the training "
                f"fold, fewer than min_beats = {cfg.min_beats}, and {cfg.strategy} would "
                f"oversample it to {wanted[c]:,}; drop or merge it (data.classes = "
                f'{{{name} = "drop"}}) or lower resample.min_beats'
            )
    return wanted


def class_weights(beats: BeatSet, cfg: ResampleConfig) -> np.ndarray | None:
    """Loss weights per class for ``class_weight`` (0 for absent classes), else None."""
    if cfg.strategy != "class_weight":
        return None
    counts = np.bincount(beats.y, minlength=len(beats.classes)).astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def epoch_class_counts(fold: BeatSet, cfg: ResampleConfig, epoch_beats: int = 0) -> list[int]:
    """Beats of each class one epoch draws from ``fold`` (what :func:`resample` returned).

    ``random`` draws ``target_counts``; every other strategy the fold's own mix. With
    ``epoch_beats`` > 0 the mix is scaled to that total (largest remainders round it).
    """
    if cfg.strategy == "random":
        wanted = target_counts(fold, cfg)
        counts = np.array([wanted[c] for c in range(len(fold.classes))], dtype=np.float64)
    else:
        counts = np.bincount(fold.y, minlength=len(fold.classes)).astype(np.float64)
    if epoch_beats <= 0 or counts.sum() == 0:
        return [int(n) for n in counts]
    exact = counts * epoch_beats / counts.sum()
    whole = np.floor(exact).astype(np.int64)
    short = epoch_beats - int(whole.sum())
    whole[np.argsort(whole - exact, kind="stable")[:short]] += 1
    return [int(n) for n in whole]


def resample(beats: BeatSet, cfg: ResampleConfig) -> BeatSet:
    """The training fold for ``cfg``: SMOTE/ADASYN/SMOTE-Tomek synthesise beats into it.

    ``none``, ``class_weight`` and ``random`` return it as is: ``random`` is drawn per epoch
    by the sampler, whose class counts (:func:`epoch_class_counts`) check its targets.
    """
    if cfg.strategy in ("none", "class_weight", "random"):
        return beats
    wanted = target_counts(beats, cfg)
    beats = _random_under(beats, wanted, cfg.seed)
    return _synthesise(beats, wanted, cfg)


def _random_under(beats: BeatSet, wanted: dict[int, int], seed: int) -> BeatSet:
    from imblearn.under_sampling import RandomUnderSampler

    counts = np.bincount(beats.y, minlength=len(beats.classes))
    strategy = {c: min(int(counts[c]), wanted[c]) for c in range(len(counts)) if counts[c] > 0}
    sampler = RandomUnderSampler(sampling_strategy=strategy, random_state=seed)
    sampler.fit_resample(np.zeros((len(beats), 1)), beats.y)
    return beats.subset(np.sort(sampler.sample_indices_))


def _synthesise(beats: BeatSet, wanted: dict[int, int], cfg: ResampleConfig) -> BeatSet:
    from imblearn.over_sampling import ADASYN, SMOTE
    from imblearn.under_sampling import TomekLinks

    counts = np.bincount(beats.y, minlength=len(beats.classes))
    strategy = {c: wanted[c] for c in range(len(counts)) if 0 < counts[c] < wanted[c]}
    x, y = beats.x, beats.y
    record, sample = beats.record, beats.sample
    if strategy:
        sampler: Any
        if cfg.strategy == "adasyn":
            sampler = ADASYN(
                sampling_strategy=strategy, n_neighbors=cfg.k_neighbors, random_state=cfg.seed
            )
        else:
            sampler = SMOTE(
                sampling_strategy=strategy, k_neighbors=cfg.k_neighbors, random_state=cfg.seed
            )
        try:
            x_new, y_new = sampler.fit_resample(beats.x, beats.y)
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HeartError(
                f"resample.strategy: {cfg.strategy} failed on the training fold ({first}); "
                'try strategy = "smote" or "random"'
            ) from None
        # imbalanced-learn keeps the original beats first, in order, then appends new ones.
        extra = len(y_new) - len(y)
        x, y = np.asarray(x_new, dtype=np.float32), np.asarray(y_new, dtype=np.int64)
        record = np.concatenate([record, np.full(extra, "", dtype=object)])
        sample = np.concatenate([sample, np.full(extra, -1, dtype=np.int64)])
    out = BeatSet(x, y, record, sample, beats.classes)
    if cfg.strategy == "smote_tomek":
        tomek = TomekLinks(sampling_strategy="all")
        tomek.fit_resample(out.x, out.y)
        out = out.subset(np.sort(tomek.sample_indices_))
    return out
