"""What the ``[search]`` settings must agree on before a search runs (exit 2 otherwise), and
the most epochs a trial can run, which the pruners' rungs are measured against.
"""

from __future__ import annotations

from heartcli.config import HeartConfig
from heartcli.config.space import Space
from heartcli.errors import UsageError


def max_trial_epochs(config: HeartConfig, space: Space) -> int:
    """The most epochs any trial can run: train.epochs (or its searched maximum), capped."""
    epochs = config.train.epochs
    searched = [p.dist for p in space.all_params() if p.key == "train.epochs" and p.dist]
    if searched:  # at the top level or under the options of a `when` (the most of them)
        epochs = max(
            int(max(float(a) for a in (d.args if d.kind == "choice" else d.args[:2])))
            for d in searched
        )
    if config.search.max_epochs:
        epochs = min(epochs, config.search.max_epochs)
    return max(1, epochs)


def check_folds(config: HeartConfig) -> None:
    """``[search] folds``: 2 or more, with no pruner and the macro-F1 the folds report."""
    s = config.search
    if s.folds == 0:
        return
    if s.folds == 1:
        raise UsageError("search.folds: 1 fold is no cross-validation; use 0 (off) or 2 or more")
    if s.refit:  # the folds of the refit stage, after the rungs (search/refit.py)
        return
    if s.backend == "ray":
        raise UsageError(
            "search.folds runs on the hyperopt backend (a Ray trial trains one fold); use "
            "--backend hyperopt, or search.folds = 0 on Ray"
        )
    if s.pruner != "none":
        raise UsageError(
            f'search.folds = {s.folds} needs search.pruner = "none": a trial\'s folds train one '
            f'after another, so there is no single curve for "{s.pruner}" to cut'
        )
    if s.metric != "val_macro_f1":
        raise UsageError(
            f"search.folds = {s.folds} selects on the folds' mean macro-F1; set search.metric "
            f'= "val_macro_f1" (got "{s.metric}")'
        )


def check_pruner(config: HeartConfig, space: Space) -> None:
    """A pruner whose first rung no trial can reach is a mistake, not a silent no-op."""
    check_folds(config)
    s = config.search
    if s.pruner != "asha":
        return
    most = max_trial_epochs(config, space)
    if s.min_epochs > most:
        raise UsageError(
            f"search.min_epochs: {s.min_epochs} is more than any trial's epochs ({most}); "
            "lower search.min_epochs or raise train.epochs"
        )
