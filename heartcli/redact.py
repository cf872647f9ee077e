"""The one redaction of secrets: credentials in URIs never reach a screen, a file or MLflow.

``redact`` is applied wherever heart prints or writes text that may hold a URI: error and
warning lines, ``--json`` documents, manifests and other JSON files, run configs, MLflow
params and model cards. It replaces the user-info part of any ``scheme://user:pass@host``
(the whole of it: a lone user name is often a token) and the values of query parameters
that name a secret (``?token=...``, ``password``, ``secret``, ``key``, ``signature``...).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://userinfo@ : the user-info runs to the last "@" before the host's "/", "?" or "#".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#\s\"'<>]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_\-]*?)(?:token|password|passwd|pwd|secret|key|signature|sig|"
    r"credential|auth)[A-Za-z0-9_\-]*=)(?P<value>[^&;#\s\"'<>]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every credential in a URI replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@" if m["info"] else m[0], text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_data(data: Any) -> Any:
    """A JSON-like value with :func:`redact` applied to every string in it (keys too)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    return data


def has_secret(text: str) -> bool:
    """Whether ``text`` holds something :func:`redact` would hide."""
    return redact(text) != text
