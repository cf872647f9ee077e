"""The folds of `heart train --folds K` and their out-of-fold figures.

The inter-patient split is record-wise by protocol: its folds are whole records
(:func:`heartcli.training.folds.record_folds`). Every other split (``random``, the Kaggle
protocol, is beat-level) gets **stratified beat-level folds** (:func:`stratified_folds`):
each class's beats shuffled and dealt round the K folds, so every fold holds every class
(that has K beats or more) in the training split's proportions, and each beat is in exactly
one fold.

Each fold's model (its best epoch) then scores its own fold; together these **out-of-fold**
predictions cover the whole training split once (about 700 F beats on the random split,
where one validation fold holds 64), and :func:`oof_figures` gives their macro-F1 with the
bootstrap 95% interval of `heart evaluate` (:func:`heartcli.metrics.metrics`). The fold's
best epoch was chosen on those same beats, so the figure leans slightly optimistic; it
leans the same way for every recipe compared on the same folds. ``RUN/oof.npz`` keeps the
predictions (beat index in the training split, fold, true class, probabilities), which a
search's ensemble averages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heartcli.data.dataset import BeatSet
from heartcli.errors import UsageError

OOF = "oof.npz"


def stratified_folds(beats: BeatSet, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint groups of beat indices covering every beat once, each class's beats
    dealt round the folds after a seeded shuffle (fold sizes per class differ by at most 1).

    Every class needs ``k`` beats or more, else a fold would miss it: one UsageError line.
    """
    if k < 2 or k > len(beats):
        raise UsageError(
            f"--folds {k}: the training split has {len(beats)} beats; use 2 to {len(beats)}"
        )
    counts = np.bincount(beats.y, minlength=len(beats.classes))
    short = [f"{c} ({int(n)})" for c, n in zip(beats.classes, counts, strict=True) if 0 < n < k]
    if short:
        raise UsageError(
            f"--folds {k}: every fold must hold every class, and class {', '.join(short)} has "
            f"fewer beats than folds; use --folds {max(2, int(min(counts[counts > 0])))} or fewer"
        )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(beats), dtype=np.int64)
    offset = 0
    for c in range(len(beats.classes)):
        idx = rng.permutation(np.flatnonzero(beats.y == c))
        # Continue the deal where the last class stopped, so the folds' sizes stay even.
        fold_of[idx] = (np.arange(len(idx)) + offset) % k
        offset = (offset + len(idx)) % k
    return [np.flatnonzero(fold_of == i) for i in range(k)]


def record_wise(split: str) -> bool:
    """Whether a split's folds are whole records (the inter-patient protocol)."""
    return split == "inter-patient"


def fold_groups(split: str, beats: BeatSet, k: int, seed: int) -> list[np.ndarray]:
    """The K validation groups of ``--folds K`` for ``split``: records or stratified beats."""
    from heartcli.training.folds import record_folds

    if record_wise(split):
        return record_folds(beats, k, seed)
    return stratified_folds(beats, k, seed)


def fold_proba(fold_dir: Path, beats: BeatSet) -> np.ndarray:
    """The probabilities of a fold run's best weights on ``beats`` (its own fold)."""
    from heartcli.model.inference import model_inputs, torch_proba, uses_rhythm
    from heartcli.model.load import load_run

    run = load_run(fold_dir)
    inputs = model_inputs(beats.x, beats.rhythm, uses_rhythm(run.model), str(fold_dir))
    return torch_proba(run.model, inputs)


def save_oof(
    run_dir: Path, groups: list[np.ndarray], y: np.ndarray, probas: list[np.ndarray]
) -> Path:
    """``RUN/oof.npz``: index (in the training split), fold (1-based), y, proba; by index."""
    from heartcli.io import atomic_path

    index = np.concatenate(groups)
    order = np.argsort(index, kind="stable")
    fold = np.concatenate([np.full(len(g), i + 1) for i, g in enumerate(groups)])
    proba = np.concatenate(probas).astype(np.float32)
    path = Path(run_dir) / OOF
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, index=index[order], fold=fold[order], y=y[index][order], proba=proba[order]
        )
    return path


def read_oof(run_dir: Path) -> dict[str, np.ndarray] | None:
    """A run's out-of-fold predictions, or None when it has none (or they are unreadable)."""
    path = Path(run_dir) / OOF
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in ("index", "fold", "y", "proba")}
    except (OSError, ValueError, KeyError):
        return None


def oof_figures(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Macro-F1 (with its bootstrap 95% interval), per-class F1 and n of out-of-fold
    predictions."""
    from heartcli.metrics import metrics

    m = metrics(y, proba.argmax(axis=1), classes, proba)
    return {
        "n": int(m["n"]),
        "macro_f1": round(float(m["macro_f1"]), 4),
        "macro_f1_ci95": [round(float(v), 4) for v in m["macro_f1_ci95"]],
        "f1": {c: round(float(v["f1"]), 4) for c, v in m["per_class"].items()},
        "support": {c: int(v["support"]) for c, v in m["per_class"].items()},
    }
