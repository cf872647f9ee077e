"""Download files over HTTP(S): resume with Range, verify SHA-256, rename into place.

A file ``NAME`` is fetched into ``NAME.part`` beside its target. A dropped connection
keeps the ``.part``; the next attempt (in this run, or the next ``heart fetch``) asks the
server for the rest with an HTTP ``Range`` header. Only a complete file whose SHA-256
equals the pinned one is renamed onto ``NAME``; a file that fails the check is deleted.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from heartcli import __version__
from heartcli.errors import DataError, HeartError
from heartcli.io import sha256_file, unwritable
from heartcli.progress import Progress

CHUNK = 1 << 16
TIMEOUT_S = 30.0
RETRIES = 3

# Errors that mean "the transfer stopped part-way": worth resuming.
_INTERRUPTED = (
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def file_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + name


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def short(digest: str) -> str:
    return digest[:12]


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _open(url: str, offset: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"heartcli/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            raise  # the .part is not a prefix the server knows: the caller restarts
        raise DataError(
            f"{url}: HTTP {exc.code} {exc.reason}; check data.url "
            "(PhysioNet: https://physionet.org/files/mitdb/1.0.0/)"
        ) from None
    except urllib.error.URLError as exc:
        raise DataError(
            f"cannot reach {url} ({_reason(exc)}); check data.url and your network, "
            "or build from a local copy with --source DIR"
        ) from None
    except _INTERRUPTED as exc:
        raise DataError(
            f"cannot reach {url} ({_reason(exc)}); check data.url and your network, "
            "or build from a local copy with --source DIR"
        ) from None
    return response


def download(
    url: str,
    target: str | Path,
    sha256: str,
    *,
    progress: Progress | None = None,
    retries: int = RETRIES,
) -> None:
    """Fetch ``url`` into ``target``, resuming ``target.part``; raise DataError on failure.

    ``progress`` hears ``task(NAME, total)`` for each response (``total``: the file's size
    when the server says it, counting bytes already in the ``.part``) and ``advance(n)``
    as data arrives (first the bytes a resumed ``.part`` already holds).
    """
    progress = progress or Progress()
    target = Path(target)
    part = part_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(target.parent, exc, "choose a writable records folder") from None
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            response = _open(url, offset)
        except urllib.error.HTTPError:
            # 416: the server cannot serve from ``offset`` (the .part is stale): start over.
            part.unlink(missing_ok=True)
            continue
        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored Range and sends the whole file
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            progress.task(target.name, total)
            if offset:
                progress.advance(offset)
            interrupted = False
            try:
                with open(part, "ab" if offset else "wb") as fh:
                    while block := response.read(CHUNK):
                        fh.write(block)
                        progress.advance(len(block))
            except _INTERRUPTED:
                interrupted = True  # the .part keeps what arrived; resume from there
            except OSError as exc:
                raise HeartError(
                    f"cannot write {part}: {exc.strerror}; choose a writable records folder"
                ) from None
        size = part.stat().st_size
        if interrupted or (total is not None and size < total):
            if attempt < retries:
                continue
            of_total = f" of {total}" if total is not None else ""
            raise DataError(
                f"{url}: download interrupted after {size}{of_total} bytes; "
                "run `heart fetch` again to resume it"
            )
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise DataError(
                f"{url}: SHA-256 mismatch for {target.name} (expected {short(sha256)}…, got "
                f"{short(digest)}…): the download is corrupt and was discarded; run `heart fetch` "
                "again to re-download it, or check data.url"
            )
        os.replace(part, target)
        return
    raise DataError(f"{url}: download failed after {retries + 1} attempts; run `heart fetch` again")
