"""AAMI EC57 figures against values computed by hand from small confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from heartcli.metrics import metrics

CLASSES = ["N", "S", "V", "F", "Q"]
# rows: true N S V F Q; columns: predicted N S V F Q
MATRIX_232 = [
    [30, 4, 1, 2, 0],
    [3, 9, 1, 0, 0],
    [1, 1, 12, 1, 0],
    [1, 0, 3, 5, 0],
    [1, 0, 1, 0, 2],
]
MATRIX_100 = [
    [20, 1, 2, 0, 0],
    [1, 1, 0, 0, 0],
    [1, 0, 8, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0],
]


def labels(matrix: list[list[int]], record: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One beat per count: true row, predicted column, the record's name."""
    true, pred = [], []
    for t, row in enumerate(matrix):
        for p, count in enumerate(row):
            true += [t] * count
            pred += [p] * count
    return np.array(true), np.array(pred), np.full(len(true), record, dtype=object)


@pytest.fixture
def figures():
    a, b = labels(MATRIX_232, "232"), labels(MATRIX_100, "100")
    y_true, y_pred, records = (np.concatenate([x, y]) for x, y in zip(a, b, strict=True))
    return metrics(y_true, y_pred, CLASSES, records=records)["aami"]


def test_gross_figures_by_hand(figures):
    # The sum of both matrices without its Q row (Q beats are not scored):
    #        N   S   V   F   Q
    #   N   50   5   3   2   0     row 60
    #   S    4  10   1   0   0     row 15
    #   V    2   1  20   1   0     row 24
    #   F    1   0   4   5   0     row 10
    #   col 57  16  28   8   0     total 109
    assert figures["scored_beats"] == 109
    assert figures["excluded_beats"] == 4
    s = figures["rows"]["SVEB"]
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (10, 5, 6, 88)
    assert s["se"] == pytest.approx(10 / 15)
    assert s["ppv"] == pytest.approx(10 / 16)
    assert s["fpr"] == pytest.approx(6 / 94)
    assert s["f1"] == pytest.approx(2 * (10 / 15) * (10 / 16) / (10 / 15 + 10 / 16))
    # VEB: the 4 F beats predicted as V are neither false positives nor true negatives.
    v = figures["rows"]["VEB"]
    assert (v["tp"], v["fn"], v["fp"], v["tn"]) == (20, 4, 4, 77)
    assert v["se"] == pytest.approx(20 / 24)
    assert v["ppv"] == pytest.approx(20 / 24)
    assert v["fpr"] == pytest.approx(4 / 81)
    assert v["f1"] == pytest.approx(20 / 24)
    n = figures["per_class"]["N"]
    assert (n["se"], n["ppv"], n["fpr"]) == pytest.approx((50 / 60, 50 / 57, 7 / 49))
    f = figures["per_class"]["F"]
    assert (f["se"], f["ppv"]) == pytest.approx((5 / 10, 5 / 8))
    assert "Q" not in figures["per_class"]
    assert figures["accuracy"] == pytest.approx(85 / 109)


def test_kappa_j_index_and_jk_by_hand(figures):
    p_observed = (50 + 10 + 20 + 5) / 109
    p_expected = (60 * 57 + 15 * 16 + 24 * 28 + 10 * 8) / 109**2
    kappa = (p_observed - p_expected) / (1 - p_expected)
    assert figures["kappa"] == pytest.approx(kappa)
    assert figures["kappa"] == pytest.approx(0.64976, abs=1e-5)
    j = 10 / 15 + 20 / 24 + 10 / 16 + 20 / 24
    assert figures["j_index"] == pytest.approx(j)
    assert figures["jk_index"] == pytest.approx(kappa / 2 + j / 8)


def test_per_record_figures_by_hand(figures):
    records = figures["per_record"]
    assert list(records) == ["100", "232"]
    r232, r100 = records["232"], records["100"]
    assert r232["beats"] == 37 + 13 + 15 + 9  # Q row not scored
    assert r232["accuracy"] == pytest.approx((30 + 9 + 12 + 5) / 74)
    assert r232["S"] == pytest.approx(
        {"support": 13, "tp": 9, "fp": 5, "se": 9 / 13, "ppv": 9 / 14, "share": 13 / 15}
    )
    # V of 232: 3 F beats predicted V are not false positives.
    assert r232["V"] == pytest.approx(
        {"support": 15, "tp": 12, "fp": 2, "se": 12 / 15, "ppv": 12 / 14, "share": 15 / 24}
    )
    assert r100["S"] == pytest.approx(
        {"support": 2, "tp": 1, "fp": 1, "se": 0.5, "ppv": 0.5, "share": 2 / 15}
    )
    assert r100["V"]["fp"] == 2 and r100["V"]["se"] == pytest.approx(8 / 9)


def test_undefined_per_record_figures_are_null():
    y_true, y_pred, records = labels([[5, 0, 0], [0, 0, 0], [0, 0, 0]], "101")
    figures = metrics(y_true, y_pred, ["N", "S", "V"], records=records)["aami"]
    assert figures["per_record"]["101"]["S"]["se"] is None
    assert figures["per_record"]["101"]["S"]["ppv"] is None
    assert figures["rows"]["SVEB"]["se"] == 0.0


def test_no_aami_figures_for_other_classes():
    y = np.array([0, 1, 1, 0])
    assert metrics(y, y, ["normal", "abnormal"])["aami"] is None
