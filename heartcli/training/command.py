"""`heart train` as a service: open the run folder, train (or cross-validate), close it.

The CLI parses the options and loads the config; :func:`train_command` does the rest, as
`heart tune` opens its search folder inside :mod:`heartcli.search`:

- a new run: the ``--folds`` / ``[train] final`` check, the folder's name under
  ``[train] runs_dir``, the MLflow store (:func:`heartcli.tracking.reachable_config`:
  seconds, not MLflow's minutes of retries), then the folder claimed atomically;
- a resumed run: its manifest and config.toml checked, its config read with ``--set``;
- :func:`heartcli.training.train`, or :func:`heartcli.training.crossval.cross_validate`
  for ``--folds K``;
- a new run that fails before writing its manifest gives its folder (and name) back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heartcli.config import HeartConfig
from heartcli.model import runs
from heartcli.progress import Progress
from heartcli.training.crossval import CrossValResult, cross_validate
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
        config, config_base = resume_config(resume, overrides or [])
        return train(config, resume, resume=True, progress=progress, config_base=config_base)
    if config is None:
        raise ValueError("train_command: a new run needs a config")
    config, run_dir = claim_run(config, name, folds, progress)
    try:
        return _train_new(config, run_dir, folds, config_base, progress)
    except BaseException:
        runs.release_run_dir(run_dir)  # failed before its manifest: the name is free again
        raise


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
        return cross_validate(config, run_dir, folds, progress=progress, config_base=config_base)
    return train(config, run_dir, progress=progress, config_base=config_base)
