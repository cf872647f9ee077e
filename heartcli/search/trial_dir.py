"""A trial's folder, ``SEARCH/trial-NNN``: never a link, resumed from its checkpoint or
cleared (with its MLflow run) to start afresh, and closed for a process that could not."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from heartcli.errors import DataError, HeartError


def check_trial_dir(run_dir: Path) -> None:
    """A trial folder is a real folder inside its search folder: a link (to somewhere out
    of runs/) is never followed, written into or deleted through."""
    if run_dir.is_symlink() or (
        run_dir.exists() and run_dir.resolve().parent != run_dir.parent.resolve()
    ):
        raise DataError(
            f"{run_dir}: a link, not a trial folder heart made; heart never writes through "
            "it, remove the link to run the trial"
        )


def clear_trial_dir(run_dir: Path, uri: str | None, parent_run_id: str | None) -> bool:
    """True to resume the trial's run folder; a folder that cannot be resumed is cleared."""
    from heartcli.model import runs

    check_trial_dir(run_dir)
    if not run_dir.exists():
        return False
    if (run_dir / runs.CHECKPOINT).exists() and (run_dir / runs.MANIFEST).exists():
        with contextlib.suppress(DataError):
            runs.read_run_manifest(run_dir)
            return True
    _drop_tracking(uri, parent_run_id, run_dir)
    shutil.rmtree(run_dir)
    return False


def restart_trial_dir(run_dir: Path, uri: str | None, parent_run_id: str | None) -> None:
    """Clear a trial folder (and its MLflow run) that starts again from nothing."""
    check_trial_dir(run_dir)
    if run_dir.exists():
        _drop_tracking(uri, parent_run_id, run_dir)
        shutil.rmtree(run_dir)


def _drop_tracking(uri: str | None, parent_run_id: str | None, run_dir: Path) -> None:
    """Delete the MLflow runs of a trial folder that starts afresh (it gets a new run).

    Found by parent and name, not through the folder's manifest: a kill can land after the
    run was created and before the manifest names it.
    """
    if not (uri and parent_run_id):
        return
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):  # best effort: a stale run is only clutter
        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_run_id)
        stale = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and tags.mlflow.runName = '{run_dir.name}'",
        )
        for run in stale:
            client.delete_run(run.info.run_id)


def mark_ended(run_dir: Path, status: str, reason: str = "") -> None:
    """Close a trial folder whose process could not: its manifest and MLflow run (if they
    still say running) get ``status`` (pruned or failed)."""
    from heartcli.model import runs

    try:
        manifest = runs.read_run_manifest(run_dir)
    except HeartError:
        return
    if manifest.get("status") != "running":
        return
    manifest["status"] = status
    if reason:
        manifest["reason"] = reason
    runs.write_manifest(run_dir, manifest)
    tracking = manifest.get("tracking") or {}
    if tracking.get("uri") and tracking.get("run_id"):
        with contextlib.suppress(Exception):  # best effort: the run folder is what matters
            from mlflow.tracking import MlflowClient

            from heartcli.tracking import live_uri

            client = MlflowClient(tracking_uri=live_uri(tracking["uri"]))
            client.set_tag(tracking["run_id"], "heart.status", status)
            client.set_terminated(
                tracking["run_id"], status="FAILED" if status == "failed" else "FINISHED"
            )
