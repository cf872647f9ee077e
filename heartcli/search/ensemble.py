"""``[search] ensemble = k``: the search's top k trials as one model, ``SEARCH/ensemble``.

The trials are ranked by the search's metric (validation, or the folds' mean with
``[search] folds``); pruned trials (cut short) are left out. The ensemble averages the
members' probabilities (:mod:`heartcli.model.ensemble`) and is scored where the trials were, never
on test: with ``[search] folds``, the mean of the members' out-of-fold probabilities
(``trial-NNN/oof.npz``, the same folds for every trial) over the whole training split;
otherwise the search's one validation fold. Its manifest keeps the score beside the best
single trial's on the same beats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heartcli.config import HeartConfig
from heartcli.errors import DataError, UsageError
from heartcli.search.metric import maximize
from heartcli.search.records import TrialRecord, trial_name
from heartcli.search.spec import Search

ENSEMBLE = "ensemble"


def check_ensemble(config: HeartConfig) -> None:
    """Before a search starts: k cannot exceed the trials it will run."""
    k, evals = config.search.ensemble, config.search.evals
    if not isinstance(k, int):  # "greedy": search/refit.py checks it
        return
    if k == 1:
        raise UsageError("search.ensemble = 1 is the best trial alone; use 0 (off) or 2 or more")
    if k > evals:
        raise UsageError(
            f"search.ensemble = {k}: the search runs {evals} trials; lower search.ensemble "
            f"to at most {evals}, or raise search.evals"
        )


def top_trials(records: list[TrialRecord], config: HeartConfig) -> list[TrialRecord]:
    """The ``[search] ensemble`` best finished (not pruned) trials; one line if too few."""
    k = int(config.search.ensemble)
    done = [r for r in records if r.finished and r.status != "pruned" and r.metric is not None]
    if len(done) < k:
        raise UsageError(
            f"search.ensemble = {k}: only {len(done)} trials finished unpruned; lower "
            "search.ensemble, or continue the search with `heart tune --resume`"
        )
    sign = -1.0 if maximize(config.search.metric) else 1.0
    return sorted(done, key=lambda r: (sign * float(r.metric or 0.0), r.number))[:k]


def _oof_probas(trials: list[TrialRecord]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The true classes and every trial's out-of-fold probabilities, on the same beats."""
    from heartcli.training.oof import read_oof

    parts = []
    for t in trials:
        oof = read_oof(Path(t.run_dir))
        if oof is None:
            raise DataError(f"{t.run_dir}: no out-of-fold predictions (oof.npz); rerun the trial")
        parts.append(oof)
    first = parts[0]
    if any(not np.array_equal(p["index"], first["index"]) for p in parts[1:]):
        raise DataError(
            "the trials predicted different training beats (a data key in the space?), so "
            "their out-of-fold predictions cannot be averaged; take data keys out of the space"
        )
    return first["y"], [p["proba"] for p in parts]


def _val_probas(trials: list[TrialRecord], search: Search) -> tuple[np.ndarray, list[np.ndarray]]:
    """The search's one validation fold and every trial's probabilities on it."""
    from heartcli.model.inference import model_inputs, torch_proba, uses_rhythm
    from heartcli.model.load import load_run
    from heartcli.search.trial import shared_folds

    _, val = shared_folds(search)
    if val is None:
        raise UsageError(
            "search.ensemble: the space changes the validation fold (data keys or "
            "train.seed), so the trials share no beats to score an ensemble on; use "
            "search.folds, or take those keys out of the space"
        )
    probas = []
    for t in trials:
        run = load_run(t.run_dir)
        inputs = model_inputs(val.x, val.rhythm, uses_rhythm(run.model), t.run_dir)
        probas.append(torch_proba(run.model, inputs))
    return val.y, probas


def make_ensemble(search: Search, records: list[TrialRecord]) -> dict[str, Any]:
    """Write ``SEARCH/ensemble`` and return its scores (ensemble and best single trial)."""
    from heartcli.model.ensemble import write_ensemble
    from heartcli.model.runs import CONFIG, read_run_manifest
    from heartcli.training.oof import oof_figures

    config, search_dir = search.config, search.folder
    trials = top_trials(records, config)
    on = "out-of-fold" if config.search.folds else "validation"
    y, probas = _oof_probas(trials) if config.search.folds else _val_probas(trials, search)
    classes = [str(c) for c in read_run_manifest(Path(trials[0].run_dir))["classes"]]
    ensemble = oof_figures(y, np.mean(probas, axis=0), classes)
    single = oof_figures(y, probas[0], classes)
    scores = {
        "scored_on": on,
        "macro_f1": ensemble["macro_f1"],
        "macro_f1_ci95": ensemble["macro_f1_ci95"],
        "f1": ensemble["f1"],
        "best_trial_macro_f1": single["macro_f1"],
        "best_trial_macro_f1_ci95": single["macro_f1_ci95"],
        "n": ensemble["n"],
    }
    best_text = (Path(trials[0].run_dir) / CONFIG).read_text(encoding="utf-8")
    write_ensemble(
        Path(search_dir) / ENSEMBLE,
        [(trial_name(t.number), Path(t.run_dir)) for t in trials],
        best_text,
        source=f"the top {len(trials)} trials of the search by {config.search.metric}",
        scores=scores,
    )
    return {
        "dir": str(Path(search_dir) / ENSEMBLE),
        "members": [t.number for t in trials],
        **scores,
    }


def ensemble_note(info: dict[str, Any]) -> str:
    """One line for the search's notes."""
    lo, hi = info["macro_f1_ci95"]
    return (
        f"ensemble of trials {', '.join(f'{n:03d}' for n in info['members'])} in "
        f"{info['dir']}: {info['scored_on']} macro-F1 {info['macro_f1']:.4f} (95% CI "
        f"{lo:.4f}-{hi:.4f}) on {info['n']:,} beats, the best trial alone "
        f"{info['best_trial_macro_f1']:.4f}; next: heart evaluate {info['dir']}"
    )
