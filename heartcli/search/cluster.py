"""Connecting the Ray backend to a cluster, failing in seconds with one line that says why.

``--address HOST:PORT`` is the GCS address ``ray start --head`` prints; heart runs the
search's driver on this machine, which must be a node of that cluster (the head, or a
node that joined it). Without ``--address`` heart starts a Ray instance of its own.

What goes wrong, and how it is told apart before or while Ray connects:

- nothing listens at the address: a TCP connect, before Ray is asked (Ray itself retries
  for 20 s);
- the cluster wants a token (Ray 2.60 clusters use token authentication by default) and
  this process has none, or the wrong one: Ray's own error while connecting;
- the cluster runs another Ray or Python version: Ray's "Version mismatch" error.

Ray's connection attempts log to stderr from C++; while connecting that stream is kept
aside, so the user sees heart's one line instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator

from heartcli.errors import HeartError, UsageError

CONNECT_TIMEOUT_S = 3.0
# Seconds Ray keeps asking the GCS before it gives up (its default is 20).
GCS_WAIT_S = "4"
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"  # Ray reads it as spelled
TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file named by "
    "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token); `ray get-auth-token` on the head prints it"
)


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT``; None for "auto"; exit 2 for anything else."""
    text = address.strip()
    if text == "auto":
        return None
    if text.startswith("ray://"):
        raise UsageError(
            f"--address {address}: Ray Client (ray://) would run the search's driver on the "
            "head node, away from runs/; run heart tune on a node of the cluster and give "
            "the GCS address, e.g. --address 10.0.0.1:6379"
        )
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--address {address}: not HOST:PORT; give the address `ray start --head` "
            "printed, e.g. --address 10.0.0.1:6379 (or auto)"
        )
    return host.strip("[]"), int(port)


def _answers(host: str, port: int) -> str | None:
    """Why nothing answers at host:port (None when a TCP connect succeeds)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def _stderr_aside() -> Iterator[None]:
    """File descriptor 2 into a scratch file for the duration (Ray's C++ retry log)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _chain(exc: BaseException) -> str:
    """The messages of an exception and its causes, one string."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 5:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " | ".join(parts)


def why_not(exc: BaseException, address: str) -> HeartError:
    """One line for a failed ray.init against ``address``."""
    text = _chain(exc)
    if "no authentication token was found" in text:
        return UsageError(
            f"ray: the cluster at {address} uses token authentication and no token was "
            f"found here; {TOKEN_HELP}"
        )
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        mode = os.environ.get("RAY_AUTH_MODE", "")
        missing = "" if mode == "token" else " (RAY_AUTH_MODE is not token)"
        return UsageError(
            f"ray: the cluster at {address} refused this process's token{missing}; {TOKEN_HELP}"
        )
    if "ersion mismatch" in text:
        first = next((line for line in text.splitlines() if "ersion mismatch" in line), text)
        return HeartError(
            f"ray: {first.strip()[:300]}; install the cluster's Ray and Python versions here"
        )
    return HeartError(
        f"ray: cannot join the cluster at {address} ({text.splitlines()[0][:200]}); "
        "check --address and that this machine is a node of the cluster (`ray status`)"
    )


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local Ray), in seconds or a HeartError.

    True when this call started Ray (the caller leaves it with :func:`disconnect`).
    """
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--backend ray needs Ray Tune; install it with `pip install 'heartcli[ray]'`"
        ) from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        try:
            with _stderr_aside():
                ray.init(address="local", **options)  # type: ignore[arg-type]
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise HeartError(f"ray: cannot start a local Ray ({first})") from None
        return True
    where = parse_address(address)
    if where is not None:
        why = _answers(*where)
        if why is not None:
            raise HeartError(
                f"ray: nothing answers at {address} ({why}); start the head with "
                f"`ray start --head --port {where[1]}` or fix --address"
            )
    previous = os.environ.get(GCS_WAIT_ENV)
    os.environ[GCS_WAIT_ENV] = GCS_WAIT_S
    try:
        with _stderr_aside():
            ray.init(address=address, **options)  # type: ignore[arg-type]
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise why_not(exc, address) from None
    finally:
        if previous is None:
            os.environ.pop(GCS_WAIT_ENV, None)
        else:
            os.environ[GCS_WAIT_ENV] = previous
    return True


def disconnect() -> None:
    """Leave the cluster (a local Ray heart started stops with it)."""
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
