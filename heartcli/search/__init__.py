"""`heart tune`: hyperparameter search over ``[search.space]``, one run folder per trial.

Files, by what they do:

- ``spec.py``: the one :class:`Search` object (folder, config, its text, parsed space),
  read once by :func:`tune` and handed to every part below;
- ``records.py``: one trial's record (``TrialRecord``), name, config and the best of them;
  ``state.py``: the search's files, ``search.toml`` and ``search.json`` (the records), and
  the space they recorded; ``claim.py``: claiming and locking a search folder;
  ``checks.py``: what the ``[search]`` settings must agree on; ``metric.py``: the metric;
  ``trial_dir.py``: a trial's folder (resumed, cleared or closed); ``best.py``: the best
  trial's links (``best``, ``best.toml``, ``runs/best``); ``events.py``: what the search
  tells its Progress, and its ``SearchResult``;
- ``pruners.py``: stopping poor trials early (ASHA, the median stopping rule);
- ``trial.py``: the one trial runner of both backends (train, or ``[search] folds``
  cross-validation, scored into its record), with a backend's hooks;
- ``workers.py``: trials in worker processes (``--jobs``);
- ``tpe.py``: the hyperopt backend, TPE and the search loop;
- ``ray.py``: the Ray Tune backend (the same space and ``[search]`` keys), with
  ``cluster.py`` (joining a cluster), ``ray_trial.py`` (what runs on a node) and
  ``ray_results.py`` (the driver's record: trial folders, MLflow, search.json);
- ``report.py``: the top trials and the successive-halving picture; a search's end;
- ``ensemble.py``: ``[search] ensemble = k``, the top trials as one model;
- ``refit.py``: ``[search] refit = m``: after the rungs, the top m trials on K folds, each
  fold a job for the same workers; ``select.py`` chooses out of fold (greedy ensemble
  selection, decision weights, the rule that keeps them); ``final.py`` writes the choice as
  ``SEARCH/final``, which ``runs/best`` points at.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from heartcli.config import HeartConfig
from heartcli.errors import HeartError, UsageError
from heartcli.progress import Progress
from heartcli.search.events import SearchResult
from heartcli.search.records import TrialRecord, best_of, describe, trial_name
from heartcli.search.report import build_report, write_report
from heartcli.search.spec import Search
from heartcli.search.state import read_state
from heartcli.search.workers import resolve_jobs

__all__ = [
    "Search",
    "SearchResult",
    "TrialRecord",
    "best_of",
    "describe",
    "report",
    "trial_name",
    "tune",
]


def tune(
    config: HeartConfig | None,
    *,
    name: str | None = None,
    resume: Path | None = None,
    evals: int | None = None,
    max_minutes: float | None = None,
    jobs: str | int | None = None,
    config_base: Any = None,
    progress: Progress | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> SearchResult:
    """Start a new search from ``config``, or continue the one in ``resume``; with
    ``[search] refit = m``, the top m trials then train on K folds and the search's
    recommendation becomes ``SEARCH/final`` (``search/refit.py``, ``search/final.py``); with
    ``[search] ensemble = k``, then the top k trials as one model (``search/ensemble.py``).
    A search whose every trial failed is a HeartError (exit 1) naming the first failure.

    A new search runs its config as it is: its budget and backend are config keys, which
    `heart tune`'s options set as ``--set`` items (:func:`heartcli.config.option_overrides`).
    ``evals``, ``max_minutes`` and ``backend`` are for ``resume``: this invocation's
    budget (0 minutes: none) and backend. ``jobs``: trials at once (the Ray backend's
    ``[search] concurrency``). ``progress`` is told how it goes (search/events.py)."""
    from heartcli.search.ensemble import ensemble_note, make_ensemble

    progress = progress or Progress()
    if resume is not None:
        search, result = _resume(Path(resume), evals, max_minutes, jobs, backend, address, progress)
    elif config is None:
        raise UsageError("tune: give a config, or a search folder to resume")
    else:
        if evals is not None or max_minutes is not None or backend is not None:
            raise UsageError(
                "evals/max_minutes/backend continue a search; a new one takes them from its "
                "config ([search] evals, max_minutes, backend)"
            )
        search, result = _start(config, name, config_base, jobs, address, progress)
    failed = [r for r in result.records if r.status == "failed"]
    if result.records and len(failed) == len(result.records):
        raise HeartError(
            f"{result.search_dir}: every trial failed ({len(failed)}; trial "
            f"{failed[0].number}: {failed[0].reason}); fix the cause and continue with "
            f"`heart tune --resume {result.search_dir}` (a resumed search keeps its config: "
            "for a config key, start a new search)"
        )
    if isinstance(search.s.ensemble, int) and search.s.ensemble:  # "greedy": the refit's
        info = make_ensemble(replace(search, folder=result.search_dir), result.records)
        result.ensemble = info
        result.notes.append(ensemble_note(info))
    return result


def hold_credentials(config: HeartConfig) -> None:
    """Files heart writes carry the tracking URI redacted (redact.py); the trials and the
    worker processes of this search read the real one from the environment instead."""
    from heartcli.redact import has_secret

    uri = config.tracking.uri
    if config.tracking.enabled and uri and has_secret(uri):
        os.environ.setdefault("MLFLOW_TRACKING_URI", uri)


def _start(
    config: HeartConfig,
    name: str | None,
    config_base: Any,
    jobs: str | int | None,
    address: str | None,
    progress: Progress,
) -> tuple[Search, SearchResult]:
    """A new search: planned (checked) once, then claimed and run by its backend."""
    from heartcli.search.claim import new_search
    from heartcli.search.ensemble import check_ensemble
    from heartcli.search.refit import check_refit
    from heartcli.search.tpe import run_search
    from heartcli.tracking import reachable_config

    hold_credentials(config)
    check_ensemble(config)
    on_ray = config.search.backend == "ray"
    n_jobs = resolve_jobs(jobs, cluster=on_ray)
    if jobs is not None and on_ray:
        config.search.concurrency = n_jobs
    check_refit(config, config.search.parsed_space())
    search = Search.plan(config, name, config_base)
    if config.search.folds:  # the data can be cut into that many folds, before any trial
        from heartcli.training.crossval import check_fold_data

        check_fold_data(config, config.search.folds)
    # An MLflow server that does not answer: one line in seconds, before the folder is
    # claimed (the name stays free), as `heart train` does.
    checked, note = reachable_config(config)
    if note:
        progress.note(note)
        search = Search.plan(checked, name, config_base)
    if on_ray:
        from heartcli.search.ray import start_ray

        return search, start_ray(search, address=address, progress=progress)
    lock = new_search(search)
    try:
        return search, run_search(search, jobs=n_jobs, progress=progress, lock=lock)
    except BaseException:
        release_search(search.folder)  # failed before any trial: the name is free again
        raise


def release_search(folder: Path) -> None:
    """Undo :func:`heartcli.search.claim.new_search` for a search that stopped before any
    trial was recorded (its folder holds its config, its state and nothing else)."""
    import shutil

    from heartcli.search.claim import LOCK
    from heartcli.search.report import REPORT_JSON, REPORT_PNG
    from heartcli.search.state import CONFIG, STATE

    try:
        if read_state(folder).get("trials"):
            return
    except HeartError:
        return
    if all(p.name in (CONFIG, LOCK, STATE, REPORT_JSON, REPORT_PNG) for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def _resume(
    folder: Path,
    evals: int | None,
    max_minutes: float | None,
    jobs: str | int | None,
    backend: str | None,
    address: str | None,
    progress: Progress,
) -> tuple[Search, SearchResult]:
    """Continue the search in ``folder`` with its own config, read once."""
    from heartcli.search.refit import check_folders
    from heartcli.search.tpe import run_search

    n_jobs = resolve_jobs(jobs, cluster=backend == "ray")
    state = read_state(folder)
    search = Search.read(folder)
    check_folders(search, state)  # a finished fold lost: one line, before anything runs
    if (backend or search.s.backend) == "ray":
        from heartcli.search.ray import resume_ray

        if evals is not None or max_minutes is not None:
            raise UsageError(
                "--evals/--max-minutes: a Ray search continues with its own budget; drop them"
            )
        return search, resume_ray(search, address=address, progress=progress)
    if address is not None:
        raise UsageError("--address: only with --backend ray")
    result = run_search(
        search, evals=evals, max_minutes=max_minutes, jobs=n_jobs, progress=progress
    )
    return search, result


def report(search_dir: Path) -> dict[str, Any]:
    """The report of a finished or running search; report.json and report.png rewritten."""
    state = read_state(Path(search_dir))
    data = build_report(Search.read(Path(search_dir)), state)
    write_report(Path(search_dir), data)
    return data
