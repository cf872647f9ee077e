"""Would per-class decision weights, fitted out of fold, raise macro-F1? (A measurement.)

A `heart train --folds K` run keeps every training beat's out-of-fold probabilities in
``RUN/oof.npz``. The balanced draws of ``[resample]`` make a model over-predict the rare
classes; multiplying its probabilities by one weight per class before the argmax undoes
part of that. This benchmark fits the weights on K-1 folds' out-of-fold predictions
(coordinate ascent on a log grid, class 0 fixed at 1) and scores them on the held-out fold,
each fold in turn, so no figure is scored on the beats its weights were fitted on. The test
part is not read.

    python benchmarks/bench_oof_weights.py runs/NAME [runs/OTHER ...]

Prints, per held-out fold: macro-F1 of the plain argmax and of the weighted one, and the
weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# The fitting lives in the package: `heart tune` with [search] refit decides with it whether
# decision weights join its recommended model (heartcli/search/select.py).
from heartcli.search.select import fit_decision_weights as fit_weights
from heartcli.search.select import macro_f1 as _macro_f1


def macro_f1(proba: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    return _macro_f1(y, proba, weights)


def measure(run: Path) -> None:
    oof = np.load(run / "oof.npz")
    proba, y, fold = oof["proba"].astype(np.float64), oof["y"], oof["fold"]
    plain = np.ones(proba.shape[1])
    print(f"{run}: {len(y):,} out-of-fold beats, macro-F1 {macro_f1(proba, y, plain):.4f}")
    for f in np.unique(fold):
        fit, held = fold != f, fold == f
        weights = fit_weights(proba[fit], y[fit])
        before = macro_f1(proba[held], y[held], plain)
        after = macro_f1(proba[held], y[held], weights)
        print(
            f"  held-out fold {f}: argmax {before:.4f}, weighted {after:.4f} "
            f"({after - before:+.4f}); weights {np.round(weights, 2).tolist()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of `--folds K` runs")
    for run in parser.parse_args().runs:
        measure(run)


if __name__ == "__main__":
    main()
