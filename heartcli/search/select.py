"""What `heart tune` recommends from out-of-fold probabilities: greedy ensemble selection,
per-class decision weights, and the rule that keeps either only where it gains.

Pure numpy on the refitted trials' out-of-fold probabilities (``trial-NNN/oof.npz``: every
training beat predicted by a fold model that never trained on it; every trial on the same
folds). Nothing here reads the test part.

- **Greedy ensemble selection with replacement** (Caruana et al. 2004, as auto-sklearn and
  AutoGluon use it): start from no member; in each of :data:`ROUNDS` rounds add the trial
  (one already in may be added again) whose addition gives the highest macro-F1 of the
  members' mean probabilities; keep the best prefix of the rounds (the earliest on a tie).
  A trial's weight is the share of the kept rounds that picked it.
- **Decision weights**: one positive weight per class, multiplying the probabilities before
  the argmax (class 0 stays 1): coordinate ascent of macro-F1 on a log grid of 0.08 to 12
  (:func:`fit_decision_weights`; what benchmarks/bench_oof_weights.py measured).

Both are fitted on the very beats they would be scored on, so their out-of-fold figure
leans optimistic. The decision whether they join is therefore **cross-fitted**: for each
fold, the weights are chosen on the other folds' beats and applied to this fold's; the
pooled predictions are scored once. The rule, fixed before any run:

- the ensemble replaces the best single trial only when its cross-fitted out-of-fold
  macro-F1 exceeds the best single trial's out-of-fold macro-F1 by more than
  :data:`MARGIN` (0.002) and it holds two trials or more;
- decision weights join only when the cross-fitted macro-F1 with them exceeds the same
  model's out-of-fold macro-F1 without them by more than :data:`MARGIN`.

Why 0.002: the best single trial is already an ensemble of its K fold models, and on the
random split averaging a recipe's fold models gains about 0.001 on test
(examples/mitbih-rhythm.toml: 0.954 alone, 0.955 as a 3-fold ensemble). An ensemble of
several trials costs several times the inference; it must gain clearly more than what
averaging alone gives before it is the recommendation. Cross-fitting takes the selection's
own optimism out of the comparison; the margin is for the noise left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heartcli.metrics import confusion_matrix, macro_f1_from_confusion

ROUNDS = 25  # greedy rounds (AutoGluon's weighted ensemble default: 25)
MARGIN = 0.002  # the gain out of fold that an ensemble or decision weights must exceed
GRID = np.exp(np.linspace(-2.5, 2.5, 41))  # decision weights from 0.08 to 12
SWEEPS = 3  # coordinate-ascent passes over the classes


def macro_f1(y: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Macro-F1 of the argmax of ``proba`` (times ``weights`` per class when given)."""
    scores = proba if weights is None else proba * weights
    cm = confusion_matrix(y, scores.argmax(axis=1), proba.shape[1])
    return float(macro_f1_from_confusion(cm))


# --------------------------------------------------------------------------- greedy ensemble


@dataclass
class Greedy:
    """Greedy selection's result: each candidate's weight and the macro-F1 of every round."""

    weights: np.ndarray  # one per candidate, summing to 1 (zeros for unpicked ones)
    trace: list[float] = field(default_factory=list)  # the macro-F1 after each round
    kept: int = 0  # the rounds of the kept prefix

    def mix(self, probas: list[np.ndarray]) -> np.ndarray:
        """The weighted mean of ``probas`` (one per candidate)."""
        return np.tensordot(self.weights, np.stack(probas), axes=1)


def greedy(probas: list[np.ndarray], y: np.ndarray, rounds: int = ROUNDS) -> Greedy:
    """Caruana's selection with replacement over ``probas`` (one array per candidate, same
    beats); ties go to the earlier candidate, and to the earlier round."""
    counts = np.zeros(len(probas))
    total = np.zeros_like(probas[0], dtype=np.float64)
    best, best_counts, trace, kept = -1.0, counts, [], 0
    for r in range(1, rounds + 1):
        scores = [macro_f1(y, (total + p) / r) for p in probas]
        pick = int(np.argmax(scores))
        counts = counts.copy()
        counts[pick] += 1
        total += probas[pick]
        trace.append(scores[pick])
        if scores[pick] > best:
            best, best_counts, kept = scores[pick], counts, r
    return Greedy(best_counts / best_counts.sum(), trace, kept)


def cross_fit_greedy(probas: list[np.ndarray], y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each fold's beats mixed with the weights greedy chose on the other folds' beats."""
    out = np.zeros_like(probas[0], dtype=np.float64)
    for f in np.unique(fold):
        fit, held = fold != f, fold == f
        chosen = greedy([p[fit] for p in probas], y[fit])
        out[held] = chosen.mix([p[held] for p in probas])
    return out


# --------------------------------------------------------------------------- decision weights


def fit_decision_weights(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One weight per class maximising macro-F1 on these beats (class 0 stays 1)."""
    weights = np.ones(proba.shape[1])
    for _ in range(SWEEPS):
        for c in range(1, proba.shape[1]):
            trial = weights.copy()
            scores = []
            for g in GRID:
                trial[c] = g
                scores.append(macro_f1(y, proba, trial))
            weights[c] = GRID[int(np.argmax(scores))]
    return weights


def apply_decision(proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """What the model's graph gives with decision weights: ``w p``, renormalised."""
    scaled = proba * weights
    return scaled / scaled.sum(axis=1, keepdims=True)


def cross_fit_decision(proba: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each fold's probabilities under the decision weights fitted on the other folds."""
    out = np.zeros_like(proba, dtype=np.float64)
    for f in np.unique(fold):
        fit, held = fold != f, fold == f
        out[held] = apply_decision(proba[held], fit_decision_weights(proba[fit], y[fit]))
    return out


# --------------------------------------------------------------------------- the rule


def gains(candidate: float, reference: float) -> bool:
    """The rule of the module docstring: ``candidate`` beats ``reference`` by > MARGIN."""
    return candidate - reference > MARGIN


@dataclass
class Choice:
    """What the search recommends out of fold (see :func:`recommend`)."""

    weights: dict[int, float]  # trial number -> its share of the model
    ensemble: dict[str, Any] | None  # the greedy ensemble's figures (kept or not)
    decision: list[float] | None  # per-class decision weights, None when they did not gain
    decision_figures: dict[str, float]  # plain and cross-fitted macro-F1 of the weights
    proba: np.ndarray  # the model's out-of-fold probabilities (weights fitted on all folds)
    honest: np.ndarray  # the same, every choice cross-fitted: what its figure is scored on


def recommend(
    numbers: list[int], probas: list[np.ndarray], y: np.ndarray, fold: np.ndarray, greedy_on: bool
) -> Choice:
    """The model `heart tune` recommends from refitted trials ``numbers`` (best first, by
    out-of-fold macro-F1) and their out-of-fold ``probas``: the best trial, or its greedy
    ensemble (``greedy_on``) where the rule keeps it; then decision weights where they gain."""
    best = macro_f1(y, probas[0])
    weights: dict[int, float] = {numbers[0]: 1.0}
    proba, honest = probas[0].astype(np.float64), probas[0].astype(np.float64)
    ensemble = None
    if greedy_on and len(probas) > 1:
        chosen = greedy(probas, y)
        crossed = cross_fit_greedy(probas, y, fold)
        members = {n: float(w) for n, w in zip(numbers, chosen.weights, strict=True) if w > 0}
        ensemble = {
            "weights": members,
            "rounds": ROUNDS,
            "kept_rounds": chosen.kept,
            "trace": [round(v, 4) for v in chosen.trace],
            "macro_f1_fitted": round(chosen.trace[chosen.kept - 1], 4),
            "macro_f1_cross_fitted": round(macro_f1(y, crossed), 4),
            "best_single_macro_f1": round(best, 4),
            "kept": len(members) > 1 and gains(macro_f1(y, crossed), best),
        }
        if ensemble["kept"]:
            weights, proba, honest = members, chosen.mix(probas), crossed
    plain = macro_f1(y, honest)
    crossed_decision = cross_fit_decision(honest, y, fold)
    figures = {"plain": round(plain, 4), "cross_fitted": round(macro_f1(y, crossed_decision), 4)}
    decision = None
    if gains(macro_f1(y, crossed_decision), plain):
        decision = [float(w) for w in fit_decision_weights(proba, y)]
        proba, honest = apply_decision(proba, np.array(decision)), crossed_decision
    return Choice(weights, ensemble, decision, figures, proba, honest)
