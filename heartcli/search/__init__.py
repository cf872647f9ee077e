"""`heart tune`: hyperparameter search over ``[search.space]``, one run folder per trial.

Files, by what they do:

- ``state.py``: trial records, the JSON state, claiming a search folder, the best trial's
  links (``best``, ``best.toml``, ``runs/best``);
- ``pruners.py``: stopping poor trials early (ASHA, the median stopping rule);
- ``trial.py``: one trial, a `heart train` run that asks after each epoch whether to go on;
- ``workers.py``: trials in worker processes (``--jobs``);
- ``tpe.py``: the hyperopt backend, TPE and the search loop;
- ``ray.py``: the Ray Tune backend (the same space and ``[search]`` keys), with
  ``cluster.py`` (joining a cluster), ``ray_trial.py`` (what runs on a node) and
  ``ray_results.py`` (the driver's record: trial folders, MLflow, search.json);
- ``report.py``: the top trials and the successive-halving picture.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from heartcli.config import HeartConfig
from heartcli.errors import HeartError, UsageError
from heartcli.search.report import build_report, write_report
from heartcli.search.state import (
    SearchReporter,
    SearchResult,
    TrialRecord,
    describe,
    new_search,
    read_state,
    search_config,
)
from heartcli.search.workers import resolve_jobs

__all__ = [
    "SearchReporter",
    "SearchResult",
    "TrialRecord",
    "describe",
    "report",
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
    reporter: SearchReporter | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> SearchResult:
    """Start a new search from ``config``, or continue the one in ``resume``; with
    ``[search] ensemble = k``, then the top k trials as one model (``search/ensemble.py``).
    A search whose every trial failed is a HeartError (exit 1) naming the first failure."""
    from heartcli.search.ensemble import check_ensemble, ensemble_note, make_ensemble

    check_minutes(max_minutes)
    if config is not None:
        hold_credentials(config)
        if evals is not None:
            config.search.evals = evals
        check_ensemble(config)
    result = _search(
        config,
        name=name,
        resume=resume,
        evals=evals,
        max_minutes=max_minutes,
        jobs=jobs,
        config_base=config_base,
        reporter=reporter,
        backend=backend,
        address=address,
    )
    failed = [r for r in result.records if r.status == "failed"]
    if result.records and len(failed) == len(result.records):
        raise HeartError(
            f"{result.search_dir}: every trial failed ({len(failed)}; trial "
            f"{failed[0].number}: {failed[0].reason}); fix the cause and continue with "
            f"`heart tune --resume {result.search_dir}`"
        )
    ran = search_config(result.search_dir)
    if ran.search.ensemble:
        info = make_ensemble(result.search_dir, ran, result.records)
        result.ensemble = info
        result.notes.append(ensemble_note(info))
    return result


def check_minutes(minutes: float | None) -> None:
    """``--max-minutes``: a finite number of minutes in 0..MAX_MINUTES (0 = no budget)."""
    from heartcli.config import MAX_MINUTES

    if minutes is not None and not (math.isfinite(minutes) and 0 <= minutes <= MAX_MINUTES):
        raise UsageError(
            f"--max-minutes {minutes}: give minutes from 0 (no budget) to {MAX_MINUTES:,}"
        )


def hold_credentials(config: HeartConfig) -> None:
    """Files heart writes carry the tracking URI redacted (redact.py); the trials and the
    worker processes of this search read the real one from the environment instead."""
    from heartcli.redact import has_secret

    uri = config.tracking.uri
    if config.tracking.enabled and uri and has_secret(uri):
        os.environ.setdefault("MLFLOW_TRACKING_URI", uri)


def _search(
    config: HeartConfig | None,
    *,
    name: str | None,
    resume: Path | None,
    evals: int | None,
    max_minutes: float | None,
    jobs: str | int | None,
    config_base: Any,
    reporter: SearchReporter | None,
    backend: str | None,
    address: str | None,
) -> SearchResult:
    from heartcli.search.tpe import run_search

    on_ray = backend == "ray" or (
        backend is None and config is not None and config.search.backend == "ray"
    )
    n_jobs = resolve_jobs(jobs, cluster=on_ray)
    if resume is not None:
        search_dir = Path(resume)
        read_state(search_dir)
        if (backend or search_config(search_dir).search.backend) == "ray":
            from heartcli.search.ray import resume_ray

            if evals is not None or max_minutes is not None:
                raise UsageError(
                    "--evals/--max-minutes: a Ray search continues with its own budget; drop them"
                )
            return resume_ray(search_dir, address=address, reporter=reporter)
        if address is not None:
            raise UsageError("--address: only with --backend ray")
        return run_search(
            search_dir, evals=evals, max_minutes=max_minutes, jobs=n_jobs, reporter=reporter
        )
    assert config is not None
    if evals is not None:
        config.search.evals = evals
    if max_minutes is not None:
        config.search.max_minutes = max_minutes
    if backend is not None:
        config.search.backend = backend  # type: ignore[assignment]
    if jobs is not None and config.search.backend == "ray":
        config.search.concurrency = n_jobs
    if config.search.backend == "ray":
        from heartcli.search.ray import start_ray

        return start_ray(config, name, config_base, address=address, reporter=reporter)
    search_dir, lock = new_search(config, name, config_base)
    return run_search(search_dir, jobs=n_jobs, reporter=reporter, lock=lock)


def report(search_dir: Path) -> dict[str, Any]:
    """The report of a finished or running search; report.json and report.png rewritten."""
    data = build_report(Path(search_dir))
    write_report(Path(search_dir), data)
    return data
