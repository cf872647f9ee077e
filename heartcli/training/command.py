"""`heart train` as a service: open the run folder, train (or cross-validate), close it.

The CLI parses the options and loads the config; :func:`train_command` does the rest, as
`heart tune` opens its search folder inside :mod:`heartcli.search`:

- a new run: the ``--folds`` / ``[train] final`` check, the folder's name under
  ``[train] runs_dir``, the MLflow store (:func:`heartcli.tracking.reachable_config`:
  seconds, not MLflow's minutes of retries), then the folder claimed atomically;
- a resumed run: its manifest and config.toml checked, its config read with ``--set``;
  a cross-validated run (``--folds K``) is continued as what it is: its finished folds
  read back, an interrupted fold resumed, its final run continued without validation;
- :func:`heartcli.training.train`, or :func:`heartcli.training.crossval.cross_validate`
  for ``--folds K``;
- a new run that fails before writing its manifest gives its folder (and name) back.

One rule for "interrupted" (Ctrl-C, SIGTERM, an error, SIGKILL), for a run, each fold and
the final run of ``--folds``: what finished stays (the best weights, every finished fold),
and the name is either free again (nothing was written that lasts) or continued with
``heart train --resume RUN`` (a manifest exists, even a cross-validation's before its
first fold ends). The folder's lock (``runs.LOCK``) is held while a process trains in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heartcli.config import MAX_FOLDS, HeartConfig
from heartcli.errors import DataError, Interrupted, UsageError
from heartcli.model import runs
from heartcli.progress import Progress
from heartcli.training.crossval import (
    CrossValResult,
    check_crossval,
    cross_validate,
    resume_hint,
)
from heartcli.training.loop import TrainResult, train


def train_command(
    config: HeartConfig | None,
    *,
    name: str | None = None,
    resume: Path | None = None,
    overrides: list[str] | None = None,
    folds: int | None = None,
    config_base: Any = None,
    progress: Progress | None = None,
) -> TrainResult | CrossValResult:
    """Train ``config`` into a new run folder (``name``, default a timestamp), or continue
    the run folder ``resume`` with its own config.toml and ``overrides`` (``--set``).

    ``folds`` (a new run only) cross-validates first. ``config_base`` is the user's TOML
    document (its comments are kept in config.toml); a resumed run's is its own. A note
    that tracking falls back to the local store goes to ``progress.note``.
    """
    progress = progress or Progress()
    if resume is not None:
        if Path(resume).is_dir():
            runs.lock_run_dir(resume)  # refused while another process trains in it
        try:
            return _resume(Path(resume), overrides or [], progress)
        finally:
            runs.unlock_run_dir(resume)
    if config is None:
        raise ValueError("train_command: a new run needs a config")
    config, run_dir = claim_run(config, name, folds, progress)
    try:
        return _train_new(config, run_dir, folds, config_base, progress)
    except BaseException:
        runs.release_run_dir(run_dir)  # failed before its manifest: the name is free again
        raise
    finally:
        runs.unlock_run_dir(run_dir)


def _resume(
    run_dir: Path, overrides: list[str], progress: Progress
) -> TrainResult | CrossValResult:
    """Continue ``run_dir`` as exactly what it is, or refuse: a run from its checkpoint; a
    cross-validation from its folds to its final run (its own config: no ``--set``); an
    ensemble of fold models has nothing to continue."""
    manifest = runs.read_run_manifest(run_dir)
    crossval = manifest.get("crossval")
    if isinstance(crossval, dict):
        if overrides:
            raise UsageError(
                f"{run_dir} is a cross-validation (--folds {crossval.get('k')}): it continues "
                "with the config its folds trained with; drop --set/--max-minutes (or train "
                "a new run with the changed config)"
            )
        k = crossval.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_FOLDS:
            raise DataError(f"{run_dir / runs.MANIFEST}: crossval.k is not a fold count")
        config, config_base = resume_config(run_dir, [])
        return _cross_validate(config, run_dir, k, progress, config_base, resume=True)
    if manifest.get("ensemble"):
        raise UsageError(
            f"{run_dir} is an ensemble of other runs' weights: it has no epochs to continue; "
            "continue its members, or make the ensemble again"
        )
    config, config_base = resume_config(run_dir, overrides)
    return train(config, run_dir, resume=True, progress=progress, config_base=config_base)


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[HeartConfig, Any]:
    """The config of the run in ``run_dir`` with ``overrides``, and its TOML document; a
    cut or edited config.toml is refused."""
    from heartcli.config import load_document

    manifest = runs.read_run_manifest(run_dir)
    runs.check_run_config(run_dir, manifest)
    config = runs.read_run_config(run_dir, overrides)
    return config, load_document(run_dir / runs.CONFIG)


def claim_run(
    config: HeartConfig, name: str | None, folds: int | None, progress: Progress
) -> tuple[HeartConfig, Path]:
    """Check the request, the name and the MLflow store, then take the run folder:
    (the config to train, possibly logging to the local store instead; the folder)."""
    from heartcli.model.ensemble import check_ensemble_request
    from heartcli.tracking import reachable_config

    check_ensemble_request(config.train.final, folds)
    if folds is not None:
        check_crossval(config, folds)
    run_dir = runs.new_run_dir(config, name)
    config, note = reachable_config(config)
    if note:
        progress.note(note)
    return config, runs.claim_run_dir(run_dir)


def _train_new(
    config: HeartConfig,
    run_dir: Path,
    folds: int | None,
    config_base: Any,
    progress: Progress,
) -> TrainResult | CrossValResult:
    if folds is not None:
        return _cross_validate(config, run_dir, folds, progress, config_base, resume=False)
    return train(config, run_dir, progress=progress, config_base=config_base)


def _cross_validate(
    config: HeartConfig,
    run_dir: Path,
    k: int,
    progress: Progress,
    config_base: Any,
    *,
    resume: bool,
) -> CrossValResult:
    """`--folds K` (or its ``--resume``); Ctrl-C or SIGTERM ends in one line that says
    what stays and how to continue (exit 130)."""
    try:
        return cross_validate(
            config, run_dir, k, progress=progress, config_base=config_base, resume=resume
        )
    except KeyboardInterrupt:
        if not (run_dir / runs.MANIFEST).exists():
            raise  # stopped before the cross-validation began: nothing stays
        raise Interrupted(resume_hint(run_dir)) from None
