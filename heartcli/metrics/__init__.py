"""Honest metrics: accuracy and balanced accuracy, per-class P/R/F1 with support, macro-F1
with a 95% bootstrap interval, the confusion matrix, and sensitivity / PPV; for the AAMI
classes also the EC57 figures the inter-patient literature compares (``aami``: Se, +P, FPR
and F1 per class, the SVEB and VEB rows, kappa, j-index, jκ, per-record figures; see
:mod:`heartcli.metrics.aami`).

Macro averages run over the classes that occur in the true labels or the predictions (the
scikit-learn convention), so a class absent from a small test set does not count as F1 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heartcli.metrics import aami

BOOTSTRAP = 1000


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true, predicted]."""
    codes = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, F1 per class from one or a stack [..., k, k] of confusion matrices."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    predicted = cm.sum(axis=-2).astype(np.float64)
    actual = cm.sum(axis=-1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1_from_confusion(cm: np.ndarray) -> float:
    _, _, f1 = _per_class(cm)
    used = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(f1[used].mean()) if used.any() else 0.0


def _bootstrap_macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, k: int, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of macro-F1 over BOOTSTRAP resamples of the beats."""
    n = len(y_true)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    codes = y_true.astype(np.int64) * k + y_pred.astype(np.int64)
    scores: list[np.ndarray] = []
    chunk = max(1, min(BOOTSTRAP, 4_000_000 // n))
    for start in range(0, BOOTSTRAP, chunk):
        b = min(chunk, BOOTSTRAP - start)
        picks = codes[rng.integers(0, n, size=(b, n))]
        offsets = (np.arange(b) * k * k)[:, None]
        cms = np.bincount((picks + offsets).ravel(), minlength=b * k * k).reshape(b, k, k)
        _, _, f1 = _per_class(cms)
        used = (cms.sum(axis=1) + cms.sum(axis=2)) > 0
        scores.append((f1 * used).sum(axis=1) / np.maximum(used.sum(axis=1), 1))
    all_scores = np.concatenate(scores)
    lo, hi = np.percentile(all_scores, [2.5, 97.5])
    return float(lo), float(hi)


def metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[str],
    proba: np.ndarray | None = None,
    records: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every figure `heart evaluate` reports, as plain JSON-ready values.

    ``records`` (the record of every beat) adds per-record AAMI figures.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    precision, recall, f1 = _per_class(cm)
    support = cm.sum(axis=1)
    used = (cm.sum(axis=0) + support) > 0
    present = support > 0
    n = len(y_true)
    lo, hi = _bootstrap_macro_f1(y_true, y_pred, k)
    result: dict[str, Any] = {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[used].mean()) if used.any() else 0.0,
        "macro_recall": float(recall[used].mean()) if used.any() else 0.0,
        "macro_f1": macro_f1_from_confusion(cm),
        "macro_f1_ci95": [lo, hi],
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(cm[:, i].sum()),
                "sensitivity": float(recall[i]),
                "ppv": float(precision[i]),
            }
            for i, name in enumerate(classes)
        },
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "aami": aami.report(cm, list(classes), y_true, y_pred, records),
    }
    if proba is not None and n:
        p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(n), y_true], 1e-12, 1.0)
        result["log_loss"] = float(-np.log(p).mean())
    return result
