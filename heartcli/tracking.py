"""Experiment tracking: MLflow (params, per-epoch metrics, artifacts) and TensorBoard scalars.

MLflow is imported lazily (it is slow to import) and kept quiet. The tracking URI is, in
order: ``MLFLOW_TRACKING_URI``, ``[tracking] uri``, ``sqlite:///mlflow.db`` in the working
folder. A run can be a nested child of another (``mlflow.parentRunId``), as `heart tune`
trials are.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from heartcli.config import HeartConfig
from heartcli.errors import HeartError
from heartcli.redact import MASK, redact


def tracking_uri(config: HeartConfig) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if config.tracking.uri:
        return config.tracking.uri
    return local_uri()


REACH_TIMEOUT_S = 3.0


def live_uri(stored: str) -> str:
    """The URI to connect to for one a manifest stored (its credentials redacted): the
    same URI from ``MLFLOW_TRACKING_URI`` with its credentials, when that is where it
    points; else the stored one (MLflow also reads ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD``)."""
    if MASK not in stored:
        return stored
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env if env and redact(env) == stored else stored


def local_uri() -> str:
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}"


def unreachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why an http(s) tracking server cannot be reached (None when it answers a TCP connect).

    MLflow retries a dead server with backoff for minutes before it gives up; this check
    fails in seconds instead. Other URIs (sqlite, file paths) are not network servers.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{redact(uri)}: not a valid port"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{port} does not answer ({exc.strerror or exc})"


def reachable_config(config: HeartConfig) -> tuple[HeartConfig, str | None]:
    """``config`` if its MLflow server answers (or tracking is off or local); with
    ``on_error = "local"`` a copy logging to the local store, and a note saying so;
    otherwise a HeartError in seconds instead of MLflow's minutes of retries."""
    if not config.tracking.enabled:
        return config, None
    uri = tracking_uri(config)
    why = unreachable(uri)
    if why is None:
        return config, None
    if config.tracking.on_error == "local" and uri == config.tracking.uri:
        local = config.model_copy(deep=True)
        local.tracking.uri = local_uri()
        return local, (
            f"tracking: MLflow at {redact(uri)} is unreachable ({why}); logging to {local_uri()} "
            'instead ([tracking] on_error = "local")'
        )
    raise HeartError(
        f"tracking: cannot reach MLflow at {redact(uri)} ({why}); start the server, fix "
        '[tracking] uri, set tracking.on_error = "local" or tracking.enabled = false'
    )


def flatten(config: HeartConfig) -> dict[str, str]:
    """``section.key`` -> value as text (MLflow params are strings of at most 6000 chars)."""
    flat: dict[str, str] = {}
    for section, body in config.to_dict().items():
        for key, value in body.items():
            flat[f"{section}.{key}"] = redact(str(value))[:6000]
    return flat


# MLflow's own retries against a server that stopped answering: its defaults (7 retries,
# backoff factor 2, 120 s a request) keep a run waiting about 8 minutes in silence per
# call. heart's, unless the environment sets them: 2 retries (at once, then 2 s later) and
# 30 s a request (an artifact upload included), so a server that died ends the run in one
# line within seconds, and one that accepts connections and never answers in about 95 s.
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class _Redacting(logging.Filter):
    """Credentials out of MLflow's and urllib3's own log records (redact.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def _quiet() -> None:
    """Import MLflow with its INFO chatter (database migrations, run links) silenced, its
    retries bounded (HTTP_RETRIES) and its log records redacted."""
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # An HTTP tracking server makes MLflow print "View run ... at: http://..." on stdout,
    # which is heart's (one JSON document with --json).
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow  # noqa: F401  (configures its loggers on import; quiet them after)
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if not any(isinstance(f, _Redacting) for f in logger.filters):
            logger.addFilter(_Redacting())


def tracking_failed(uri: str | None, exc: BaseException, remedy: str) -> HeartError:
    """The one line for an MLflow call that failed: its first line, redacted, cut."""
    first = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]
    return HeartError(f"tracking: cannot log to MLflow at {redact(str(uri))} ({first}); {remedy}")


class Tracker:
    """One training run's logging; every method is a no-op when tracking is off."""

    def __init__(
        self,
        config: HeartConfig,
        run_dir: Path,
        *,
        parent: str | None = None,
        run_id: str | None = None,
    ):
        self.run_id: str | None = None
        self.uri: str | None = None
        self._client: Any = None
        self._tb: Any = None
        if config.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if not config.tracking.enabled:
            return
        self.uri = tracking_uri(config)
        why = unreachable(self.uri)
        if why is not None:  # the CLI checked first (reachable_config); a library caller may not
            raise HeartError(
                f"tracking: cannot reach MLflow at {redact(self.uri)} ({why}); start the server, "
                'fix [tracking] uri, set tracking.on_error = "local" or tracking.enabled = false'
            )
        try:
            _quiet()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=self.uri)
                if run_id is not None:
                    client.get_run(run_id)
                    client.update_run(run_id, status="RUNNING")
                    self.run_id = run_id
                else:
                    exp = client.get_experiment_by_name(config.tracking.experiment)
                    exp_id = (
                        exp.experiment_id
                        if exp is not None
                        else client.create_experiment(config.tracking.experiment)
                    )
                    tags = {"mlflow.runName": run_dir.name, "heart.run_dir": str(run_dir)}
                    if parent:
                        tags["mlflow.parentRunId"] = parent
                    run = client.create_run(exp_id, tags=tags, run_name=run_dir.name)
                    self.run_id = run.info.run_id
                    self._client = client
                    self._log_params(flatten(config))
        except Exception as exc:
            raise tracking_failed(
                self.uri, exc, "fix [tracking] uri or set tracking.enabled = false"
            ) from None
        self._client = client

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """One MLflow client call; any failure (a server that died mid-run, after MLflow's
        bounded retries) is one HeartError line, credentials redacted."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(self._client, method)(*args, **kwargs)
        except Exception as exc:
            self._client = None  # no more calls to a server that failed
            raise tracking_failed(
                self.uri,
                exc,
                "the run's files are kept: start the server and `heart train --resume` the "
                "run, or set tracking.enabled = false",
            ) from None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._call("log_batch", self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            if self._client is not None:
                self._call("set_tag", self.run_id, key, value)

    def log_artifact(self, path: Path) -> None:
        if self._client is not None and path.exists():
            self._call("log_artifact", self.run_id, str(path))

    def end(self, status: str) -> None:
        """``status`` is heart's (completed, early_stopped, pruned, interrupted, failed)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._client is None:
            return
        mlflow_status = {"interrupted": "KILLED", "failed": "FAILED"}.get(status, "FINISHED")
        self._call("set_tag", self.run_id, "heart.status", status)
        if self._client is not None:
            self._call("set_terminated", self.run_id, status=mlflow_status)
        self._client = None


def log_evaluation(manifest: dict[str, Any], result: dict[str, Any], artifacts: list[Path]) -> str:
    """Add a run's held-out figures (``test_*`` metrics) and files to its own MLflow run.

    Returns a one-line note for the user: where the figures went, or why they did not.
    """
    part = "test" if result.get("split") else "eval"
    figures = {
        f"{part}_accuracy": result["accuracy"],
        f"{part}_balanced_accuracy": result["balanced_accuracy"],
        f"{part}_macro_f1": result["macro_f1"],
        f"{part}_macro_f1_ci95_low": result["macro_f1_ci95"][0],
        f"{part}_macro_f1_ci95_high": result["macro_f1_ci95"][1],
    }
    for name, per in result["per_class"].items():
        figures[f"{part}_f1_{name}"] = per["f1"]
    aami = result.get("aami")
    if aami:
        figures[f"{part}_jk_index"] = aami["jk_index"]
        figures[f"{part}_kappa"] = aami["kappa"]
        for row, per in aami["rows"].items():
            for key in ("se", "ppv", "fpr", "f1"):
                figures[f"{part}_{row}_{key}"] = per[key]
    tags = {f"heart.{part}_data": str(result.get("data", ""))}
    return log_to_run(manifest, figures, tags, artifacts)


def log_crossval(manifest: dict[str, Any], figures: dict[str, dict[str, float]]) -> str:
    """Add the K-fold validation figures (``cv_<figure>_mean`` / ``_std``) to the MLflow run
    of a cross-validated run's final model. Returns a one-line note, as log_evaluation."""
    metrics = {f"cv_{k}_{stat}": v for k, per in figures.items() for stat, v in per.items()}
    return log_to_run(manifest, metrics, {}, [])


def log_to_run(
    manifest: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[Path],
) -> str:
    """Log metrics, tags and files to a finished run's own MLflow run (from its manifest);
    never raises. Returns a one-line note: where they went, or why they did not."""
    tracking = manifest.get("tracking") or {}
    uri, run_id = tracking.get("uri"), tracking.get("run_id")
    if not uri or not run_id:
        return "not logged to MLflow (the run was trained with tracking off)"
    uri = live_uri(str(uri))
    why = unreachable(uri)
    if why is not None:
        return f"not logged to MLflow at {redact(uri)} ({why})"
    try:
        _quiet()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            now = int(time.time() * 1000)
            client.log_batch(
                run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
            )
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            for path in artifacts:
                if path.exists():
                    client.log_artifact(run_id, str(path))
    except Exception as exc:
        first = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
        return f"not logged to MLflow at {redact(uri)} ({first})"
    return f"logged to MLflow run {run_id} at {redact(uri)}"
