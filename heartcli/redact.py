"""The one redaction of secrets: credentials never reach a screen, a file or MLflow.

``redact`` is applied wherever heart prints or writes text that may hold a URI: error and
warning lines, ``--json`` documents, manifests and other JSON files, run configs, MLflow
params, model cards, and the text of any exception that leaves the process (MLflow's
own included: ``cli/_util.py``). What it hides, in every spelling:

- the user-info of ``scheme://user:pass@host``, the whole of it (a lone user name is often
  a token): everything from ``://`` to the last ``@`` on the same line, so a password
  holding an unencoded ``/``, ``#``, ``?``, ``@``, ``://`` or a space is hidden whole
  (when in doubt, more is hidden: ``http://a.org and mail bob@b.org`` loses its middle);
- the values of query parameters whose name holds a secret's word (``?token=``,
  ``pass``/``password``/``passwd``, ``pwd``, ``secret``, ``key``, ``sig``/``signature``,
  ``credential``, ``auth``, ``session``, ``jwt``, ``cookie``...);
- every secret it has hidden once in this process, wherever it shows up again, also
  percent-decoded (``p%2Fw`` is ``p/w``) or inside an HTTP Basic ``Authorization`` value:
  a password seen in a URI never reaches a line that spells it another way.

Linear in the text: the text is scanned for ``://`` and for ``[?&;]NAME=`` with patterns
that cannot backtrack, each line examined once (a 1 MB config is redacted in milliseconds;
the previous patterns were quadratic on long runs of letters).
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote

MASK = "***"

_SCHEME_SEP = re.compile(r"://")
# [?&;]NAME=VALUE: the name's characters never include the separators, so the attempts
# starting at different separators never overlap (linear).
_QUERY = re.compile(r"[?&;]([A-Za-z0-9_.\-]++)=([^&;#\s\"'<>]*+)")
_SECRET_WORDS = (
    "token",
    "pass",
    "pwd",
    "secret",
    "key",
    "sig",
    "credential",
    "auth",
    "session",
    "jwt",
    "cookie",
    "private",
)
_MIN_SECRET = 6  # shorter values are not remembered (they would mask ordinary words)
_MAX_KNOWN = 64  # spellings remembered at most (a process meets one or two secrets)
_MAX_SECRET = 512  # longer spans are masked where they stand, not searched for elsewhere
_NOT_SECRETS = {"true", "false", "null", "none", "yes", "no"}
_known: set[str] = set()
_known_re: re.Pattern[str] | None = None


def _remember(secret: str) -> None:
    """Hide ``secret`` wherever it shows up later: as it is, percent-decoded, and the
    user-info as an HTTP Basic credential."""
    global _known_re
    if len(secret) > _MAX_SECRET or len(_known) >= _MAX_KNOWN:
        return
    spellings = {secret, unquote(secret)}
    if ":" in secret:
        user, _, password = secret.partition(":")
        spellings |= {password, unquote(password)}
        for pair in (secret, f"{unquote(user)}:{unquote(password)}"):
            spellings.add(base64.b64encode(pair.encode()).decode())
    new = {
        s
        for s in spellings
        if _MIN_SECRET <= len(s) <= _MAX_SECRET
        and MASK not in s
        and not s.isdigit()
        and s.lower() not in _NOT_SECRETS
    } - _known
    if new:
        _known.update(new)
        ordered = sorted(_known, key=len, reverse=True)  # the longest spelling first
        _known_re = re.compile("|".join(map(re.escape, ordered)))


def _secret_name(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _SECRET_WORDS)


def _userinfo(text: str) -> str:
    """Mask from each ``://`` to the last ``@`` of its line; each line is looked at once
    (a line's first ``://`` finds its last ``@``: no later ``://`` of it is looked at)."""
    parts: list[str] = []
    copied = 0  # text[:copied] is in parts
    skip = 0  # every "://" before this was dealt with
    for m in _SCHEME_SEP.finditer(text):
        start = m.end()
        if start <= skip:
            continue
        line_end = text.find("\n", start)
        end = len(text) if line_end < 0 else line_end
        skip = end
        at = text.rfind("@", start, end)
        if at <= start:  # no user-info (or an empty one: "scheme://@host")
            continue
        _remember(text[start:at])
        parts += [text[copied:start], MASK]
        copied = at
    if not parts:
        return text
    parts.append(text[copied:])
    return "".join(parts)


def _query(text: str) -> str:
    def hide(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if not value or value == MASK or not _secret_name(name):
            return m.group(0)
        _remember(value)
        return f"{m.group(0)[0]}{name}={MASK}"

    return _QUERY.sub(hide, text)


def redact(text: str) -> str:
    """``text`` with every credential in a URI, and every secret seen before, as ``***``."""
    if "://" in text:
        text = _userinfo(text)
    if "=" in text:
        text = _query(text)
    if _known_re is not None:
        text = _known_re.sub(MASK, text)
    return text


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
    """Whether ``text`` holds a credential :func:`redact` would hide (not counting secrets
    remembered from other text)."""
    return ("://" in text and _userinfo(text) != text) or ("=" in text and _query(text) != text)
