"""Redaction applied to arguments before they reach the audit log or the event bus.

Pure: arguments named like secrets lose their value; any value the vault resolved during the
call is replaced wherever it appears (also inside longer strings).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"
SECRET_NAME = re.compile(
    r"(pass(word|phrase|wd)?|secret|token|api[_-]?key|auth(orization)?|credential|private[_-]?key|cookie|session[_-]?key)",
    re.IGNORECASE,
)


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of `value` with secret-named keys and known secret values replaced."""
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    return _walk(value, values)


def _walk(v: Any, values: list[str]) -> Any:
    if isinstance(v, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_NAME.search(k) and v[k] not in (None, "")
                    else _walk(x, values)) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_walk(x, values) for x in v]
    if isinstance(v, str) and values:
        for s in values:
            if s in v:
                v = v.replace(s, REDACTED)
        return v
    if isinstance(v, bytes) and values:
        for s in values:
            v = v.replace(s.encode(), REDACTED.encode())
        return v
    return v
