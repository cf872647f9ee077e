"""The AAMI EC57 figures the inter-patient literature compares (de Chazal 2004 onwards).

For the AAMI classes (N, S, V, F and maybe Q), from the confusion matrix [true, predicted]:

* Q beats are not scored (EC57; de Chazal 2004; Mondéjar-Guerra 2019): the true-Q row
  is left out. A scored beat predicted as Q is a miss for its own class.
* per scored class c: TP, FN = the rest of row c, FP = the rest of column c, TN = all
  other scored beats; Se = TP / (TP + FN), +P = TP / (TP + FP), FPR = FP / (FP + TN),
  F1 = 2 Se +P / (Se + +P) (0 where undefined). For V, a fusion beat (F) predicted as V
  is neither rewarded nor penalised: it counts in neither FP nor TN.
* SVEB is the row of S and VEB the row of V.
* kappa: Cohen's kappa of the scored matrix, (p_o - p_e) / (1 - p_e).
* j-index (Mondéjar-Guerra et al. 2019): Se_S + Se_V + +P_S + +P_V (0 to 4), and
  jκ = κ / 2 + j / 8 (0 to 1), the score their ensemble was selected on.
* per record: the scored beats, accuracy, and for S and V the support, TP, FP, Se, +P
  (null where undefined) and the record's share of all scored beats of the class: DS2's
  SVEB figures are 75% record 232.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REQUIRED = ("N", "S", "V")
ROWS = {"SVEB": "S", "VEB": "V"}
EXCLUDED = "Q"
NOTE = (
    "AAMI EC57: Q beats not scored; F beats predicted as V neither rewarded nor penalised; "
    "jκ = κ/2 + j/8 with j = Se_S + Se_V + +P_S + +P_V (Mondéjar-Guerra 2019)"
)


def applies(classes: list[str]) -> bool:
    """The AAMI figures need the classes N, S and V (by name)."""
    return all(name in classes for name in REQUIRED)


def _div(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def scored_matrix(cm: np.ndarray, classes: list[str]) -> np.ndarray:
    """The confusion matrix with the true-Q row zeroed (Q beats are not scored)."""
    scored = np.array(cm, dtype=np.int64, copy=True)
    if EXCLUDED in classes:
        scored[classes.index(EXCLUDED), :] = 0
    return scored


def class_figures(cm: np.ndarray, classes: list[str], name: str) -> dict[str, Any]:
    """TP, FN, FP, TN, Se, +P, FPR and F1 of class ``name`` on a scored matrix."""
    i = classes.index(name)
    total = int(cm.sum())
    tp = int(cm[i, i])
    fn = int(cm[i, :].sum()) - tp
    fp = int(cm[:, i].sum()) - tp
    tn = total - tp - fn - fp
    if name == "V" and "F" in classes:
        fp -= int(cm[classes.index("F"), i])  # F as V: not a false positive, nor a negative
    se, ppv, fpr = _div(tp, tp + fn), _div(tp, tp + fp), _div(fp, fp + tn)
    f1 = _div(2 * (se or 0.0) * (ppv or 0.0), (se or 0.0) + (ppv or 0.0))
    return {
        "support": tp + fn,
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "se": se or 0.0,
        "ppv": ppv or 0.0,
        "fpr": fpr or 0.0,
        "f1": f1 or 0.0,
    }


def kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a confusion matrix."""
    n = float(cm.sum())
    if n == 0:
        return 0.0
    observed = float(np.trace(cm)) / n
    expected = float((cm.sum(axis=1) * cm.sum(axis=0)).sum()) / (n * n)
    return (observed - expected) / (1.0 - expected) if expected < 1.0 else 0.0


def per_record(
    y_true: np.ndarray, y_pred: np.ndarray, records: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Per record: scored beats, accuracy, and S / V support, TP, FP, Se, +P, share."""
    k = len(classes)
    names = np.asarray(records, dtype=str)
    known = names != ""
    totals = scored_matrix(_cm(y_true[known], y_pred[known], k), classes).sum(axis=1)
    result: dict[str, Any] = {}
    for record in sorted(set(names[known].tolist())):
        mine = names == record
        cm = scored_matrix(_cm(y_true[mine], y_pred[mine], k), classes)
        entry: dict[str, Any] = {
            "beats": int(cm.sum()),
            "accuracy": _div(float(np.trace(cm)), float(cm.sum())),
        }
        for name in ("S", "V"):
            f = class_figures(cm, classes, name)
            i = classes.index(name)
            entry[name] = {
                "support": f["support"],
                "tp": f["tp"],
                "fp": f["fp"],
                "se": _div(f["tp"], f["support"]),
                "ppv": _div(f["tp"], f["tp"] + f["fp"]),
                "share": _div(f["support"], int(totals[i])),
            }
        result[record] = entry
    return result


def _cm(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    codes = np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(codes, minlength=k * k).reshape(k, k)


def report(
    cm: np.ndarray,
    classes: list[str],
    y_true: np.ndarray | None = None,
    y_pred: np.ndarray | None = None,
    records: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """Every AAMI figure of a confusion matrix (None when the classes are not AAMI's)."""
    if not applies(classes):
        return None
    scored = scored_matrix(np.asarray(cm), classes)
    names = [c for c in classes if c != EXCLUDED]
    figures = {name: class_figures(scored, classes, name) for name in names}
    s, v = figures["S"], figures["V"]
    j = s["se"] + v["se"] + s["ppv"] + v["ppv"]
    kap = kappa(scored)
    n = int(scored.sum())
    result: dict[str, Any] = {
        "scored_beats": n,
        "excluded_beats": int(np.asarray(cm).sum()) - n,
        "accuracy": _div(float(np.trace(scored)), n) or 0.0,
        "per_class": figures,
        "rows": {row: figures[name] for row, name in ROWS.items()},
        "kappa": kap,
        "j_index": j,
        "jk_index": kap / 2.0 + j / 8.0,
        "note": NOTE,
    }
    if (
        records is not None
        and y_true is not None
        and y_pred is not None
        and len(records) == len(y_true)
        and any(str(r) for r in records)
    ):
        result["per_record"] = per_record(y_true, y_pred, records, classes)
    return result
