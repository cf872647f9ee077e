"""Which training beats an epoch visits: class balancing by drawing indices, not copies.

Each epoch draws a fixed number of beats per class (``[resample]``'s class mix, scaled to
``[train] epoch_beats``) from the beats the fold holds once each. A class drawn more often
than it has beats goes round whole shuffles of its beats, then part of one more, so every
beat of it is seen ``floor`` or ``ceil`` of (drawn / beats) times; a class drawn less often
gets a fresh random subset every epoch. The draws are seeded by (seeds, epoch), so a resumed
run replays the epochs an uninterrupted one would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class EpochSampler:
    """Per-class stratified draws over a training fold, seeded per epoch."""

    def __init__(self, y: np.ndarray, per_class: Sequence[int], seeds: tuple[int, ...]):
        self.by_class = [np.flatnonzero(y == c) for c in range(len(per_class))]
        self.per_class = [int(n) if len(self.by_class[c]) else 0 for c, n in enumerate(per_class)]
        self.seeds = tuple(int(s) for s in seeds)

    def __len__(self) -> int:
        """Beats one epoch draws."""
        return sum(self.per_class)

    def indices(self, epoch: int) -> np.ndarray:
        """The fold's row indices epoch ``epoch`` visits, in the order it visits them."""
        rng = np.random.default_rng([*self.seeds, epoch])
        pairs = zip(self.by_class, self.per_class, strict=True)
        parts = [_draw(rows, want, rng) for rows, want in pairs]
        drawn = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
        return rng.permutation(drawn)


def _draw(rows: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """``want`` of ``rows``: whole shuffles first, then part of one more."""
    if want == 0 or len(rows) == 0:
        return np.array([], dtype=np.int64)
    rounds, rest = divmod(want, len(rows))
    chunks = [rng.permutation(rows) for _ in range(rounds)]
    chunks.append(rng.permutation(rows)[:rest])
    return np.concatenate(chunks).astype(np.int64)
