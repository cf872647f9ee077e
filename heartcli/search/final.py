"""What a search with ``[search] refit`` recommends: ``SEARCH/final``, linked as ``runs/best``.

:func:`run_refit` runs the refit stage (:mod:`heartcli.search.refit`), then
:func:`heartcli.search.select.recommend` chooses out of fold: the best refitted trial, or
the greedy ensemble of the refitted trials where the rule of ``select.py`` keeps it, with
per-class decision weights where they gain. :func:`write_final` writes the choice as one
model (:mod:`heartcli.model.ensemble`): the K fold models of every chosen trial, each
weighted by its trial's share / K, the decision weights its last layer, the out-of-fold
figures in its manifest. `heart evaluate`, `heart predict` and `heart export` treat it as
any model. :func:`link_final` points ``SEARCH/best`` and ``runs/best`` at it and writes
``best.toml``: the config of the best refitted trial, runnable by `heart train`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from heartcli.errors import DataError, HeartError
from heartcli.search import select
from heartcli.search.best import BEST, BEST_CONFIG, link
from heartcli.search.records import TrialRecord, trial_config, trial_name
from heartcli.search.refit import REFIT, Hooks, Refit, check_folders, fold_dir
from heartcli.search.spec import Search
from heartcli.search.workers import drive_folds

FINAL = "final"
RULE = (
    "the greedy ensemble replaces the best single trial only when its cross-fitted "
    f"out-of-fold macro-F1 exceeds the best trial's by more than {select.MARGIN} (and it holds "
    "two trials or more); decision weights join only when their cross-fitted out-of-fold "
    f"macro-F1 exceeds the model's without them by more than {select.MARGIN}"
)


def run_refit(
    search: Search,
    state: dict[str, Any],
    records: list[TrialRecord],
    *,
    jobs: int,
    hooks: Hooks,
    args: Any,
) -> dict[str, Any] | None:
    """The refit stage, then the recommendation (``state["refit"]["final"]``); None when
    it could not end (the search's time ran out: `--resume` continues it). ``args``: the
    WorkerArgs of the fold workers."""
    refit = Refit(search, state, records, hooks)
    order = refit.book["order"]
    check_folders(search, state)
    if not order:
        hooks.progress.note("refit: no trial finished with a score; nothing to refit")
        return None
    hooks.progress.stage(
        f"refit: the top {len(order)} trials ({', '.join(f'{n:03d}' for n in order)}) on "
        f"{refit.k} folds of the whole training part"
    )
    for number in order:  # every fold done, cut off before its out-of-fold file
        if refit._complete(number) and refit.entry(number).get("refit") != "completed":
            refit._assemble(number)
    hooks.save()
    drive_folds(refit, args, jobs)
    refit.book["out_of_time"] = refit.out_of_time and bool(refit.pending())
    if refit.book["out_of_time"]:  # folds left to train: `heart tune --resume` trains them
        hooks.save()
        return None
    ranked = refit.finished()
    if not ranked:
        failed = [(n, e.get("reason", "")) for n, e in refit.book["trials"].items()]
        raise HeartError(
            f"{search.folder}: no refitted trial finished (trial {failed[0][0]}: "
            f"{failed[0][1]}); fix the cause and continue with `heart tune --resume "
            f"{search.folder}`"
        )
    final = recommend(search, refit, ranked)
    refit.book["final"] = final
    hooks.save()
    hooks.log({"final_oof_macro_f1": final["macro_f1"]}, 0)
    hooks.progress.done(FINAL, final)
    return final


def _oofs(search: Search, numbers: list[int]) -> list[dict[str, np.ndarray]]:
    from heartcli.training.oof import read_oof

    oofs = []
    for n in numbers:
        oof = read_oof(search.trial_dir(n))
        if oof is None:
            raise DataError(f"{search.trial_dir(n) / 'oof.npz'}: missing or unreadable; "
                            f"continue with `heart tune --resume {search.folder}`")  # fmt: skip
        oofs.append(oof)
    if any(not np.array_equal(o["index"], oofs[0]["index"]) for o in oofs[1:]) or any(
        not np.array_equal(o["fold"], oofs[0]["fold"]) for o in oofs[1:]
    ):
        raise DataError(
            f"{search.folder}: the refitted trials predicted different beats or folds; start "
            "the search again under a new --name"
        )
    return oofs


def recommend(search: Search, refit: Refit, ranked: list[int]) -> dict[str, Any]:
    """Choose out of fold among the refitted trials ``ranked`` (best first) and write the
    choice as ``SEARCH/final``; its figures."""
    from heartcli.training.oof import oof_figures

    oofs = _oofs(search, ranked)
    y, fold = oofs[0]["y"], oofs[0]["fold"]
    classes = list(refit.entry(ranked[0])["classes"])
    greedy_on = search.s.ensemble == "greedy"
    choice = select.recommend(ranked, [o["proba"] for o in oofs], y, fold, greedy_on)
    honest = oof_figures(y, choice.honest, classes)
    decision = dict(zip(classes, choice.decision, strict=True)) if choice.decision else None
    final: dict[str, Any] = {
        "dir": str(search.folder / FINAL),
        "kind": "ensemble" if len(choice.weights) > 1 else "trial",
        "best_trial": ranked[0],
        "best_trial_macro_f1": refit.entry(ranked[0])["oof"]["macro_f1"],
        "members": [
            {"trial": n, "weight": round(w, 4), "oof_macro_f1": refit.entry(n)["oof"]["macro_f1"]}
            for n, w in sorted(choice.weights.items(), key=lambda item: (-item[1], item[0]))
        ],
        "folds": refit.k,
        "macro_f1": honest["macro_f1"],
        "macro_f1_ci95": honest["macro_f1_ci95"],
        "f1": honest["f1"],
        "n": honest["n"],
        "macro_f1_fitted": round(select.macro_f1(y, choice.proba), 4),
        "ensemble": choice.ensemble,
        "decision_weights": decision,
        "decision": choice.decision_figures,
        "rule": RULE,
        "ended_at": time.time(),
    }
    write_final(search, refit.k, choice, decision, final)
    return final


def write_final(
    search: Search,
    k: int,
    choice: select.Choice,
    decision: dict[str, float] | None,
    final: dict[str, Any],
) -> None:
    """``SEARCH/final``: the chosen trials' fold models as one weighted model, built in a
    staging folder and moved into place whole."""
    from heartcli.io import place_dir, staged_dir
    from heartcli.model.ensemble import write_ensemble
    from heartcli.model.runs import CONFIG

    members, weights = [], []
    for number, share in choice.weights.items():
        for fold in range(1, k + 1):
            members.append((f"{trial_name(number)}/fold-{fold}", fold_dir(search, number, fold)))
            weights.append(share / k)
    lead = max(choice.weights, key=lambda n: (choice.weights[n], -n))
    text = (fold_dir(search, lead, 1) / CONFIG).read_text(encoding="utf-8")
    trials = ", ".join(f"{trial_name(n)} x {w:.3f}" for n, w in choice.weights.items())
    scores = {
        "oof_macro_f1": final["macro_f1"],
        "oof_macro_f1_ci95": final["macro_f1_ci95"],
        "oof_macro_f1_fitted": final["macro_f1_fitted"],
        "oof_beats": final["n"],
        "rule": RULE,
    }
    target = search.folder / FINAL
    with staged_dir(target) as tmp:
        write_ensemble(
            tmp,
            members,
            text,
            source=f"heart tune {search.folder.name}: the {k} fold models of {trials}",
            scores=scores,
            weights=weights,
            decision=decision,
        )
        place_dir(tmp, target)


def link_final(
    search: Search, records: list[TrialRecord], final: dict[str, Any]
) -> tuple[TrialRecord | None, Path | None, list[str]]:
    """``SEARCH/best`` and ``runs/best`` point at ``SEARCH/final``; ``best.toml`` is the best
    refitted trial's config. Returns (that trial, best.toml, notes)."""
    from heartcli.config import dumps
    from heartcli.io import write_text

    best = next((r for r in records if r.number == final["best_trial"]), None)
    if best is None:
        return None, None, [f"trial {final['best_trial']} is not in the search's records"]
    cfg = trial_config(search.config, best.params, best.number)
    members = ", ".join(f"{trial_name(m['trial'])} x {m['weight']}" for m in final["members"])
    header = (
        f"# Best refitted trial of search {search.folder.name}: {trial_name(best.number)}, "
        f"out-of-fold macro-F1 {final['best_trial_macro_f1']:.4f} ({final['folds']} folds).\n"
        f"# The search recommends {search.folder / FINAL} ({members}; out-of-fold macro-F1 "
        f"{final['macro_f1']:.4f}). Train this trial's recipe again with\n"
        f"#   heart train --config {search.folder / BEST_CONFIG} --name "
        f"{search.folder.name}-best\n\n"
    )
    best_config = search.folder / BEST_CONFIG
    write_text(best_config, header + dumps(cfg, search.document()))
    link(search.folder / BEST, FINAL)
    notes = []
    runs_best = search.folder.parent / BEST
    if not link(runs_best, f"{search.folder.name}/{FINAL}"):
        notes.append(f"{runs_best} is a real folder, not a link; left as it is")
    return best, best_config, notes


def final_of(state: dict[str, Any]) -> dict[str, Any] | None:
    """The recommendation search.json holds (None before the refit stage ends)."""
    return (state.get(REFIT) or {}).get("final")


def final_note(final: dict[str, Any]) -> str:
    """One line for the search's notes."""
    lo, hi = final["macro_f1_ci95"]
    what = (
        "the greedy ensemble of "
        + ", ".join(f"{trial_name(m['trial'])} ({m['weight']:.2f})" for m in final["members"])
        if final["kind"] == "ensemble"
        else f"{trial_name(final['best_trial'])} (its {final['folds']} fold models)"
    )
    weights = ", with decision weights" if final["decision_weights"] else ""
    return (
        f"recommended: {final['dir']}: {what}{weights}; out-of-fold macro-F1 "
        f"{final['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on {final['n']:,} beats; "
        f"next: heart evaluate {final['dir']}"
    )


def link_result(search: Search, result: Any, state: dict[str, Any]) -> None:
    """A search's end, either backend: ``runs/best`` is SEARCH/final when the refit stage
    chose one, else the best trial by the search's metric; ``result.refit`` the stage."""
    from heartcli.search.best import link_best

    final = final_of(state) if search.s.refit else None
    if final is not None:
        result.best, result.best_config, result.notes = link_final(search, result.records, final)
        result.notes.append(final_note(final))
    else:
        result.best, result.best_config, result.notes = link_best(search, result.records)
        if search.s.refit:
            result.notes.append(
                "refit: not finished (the search stopped first); runs/best is the best trial "
                f"by {search.metric} until `heart tune --resume {search.folder}` ends it"
            )
    if search.s.refit:
        result.refit = dict(state.get(REFIT) or {})
