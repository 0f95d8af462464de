"""What the owner sees and the audit log records of a call: exactly what runs, secrets by reference.

Pure. Only values the vault resolved for the call are hidden, and each is shown as the reference
it came from (`${secret:NAME}`), wherever it appears (also inside longer strings, also encoded:
the vault hands over every form it scrubs). Nothing else is ever hidden: a value the agent chose
is shown and recorded as sent, even under a key named like a credential (`env.DEPLOY_TOKEN`),
because hiding it would let the agent hide what it runs from the owner who approves it. Such
keys get a warning instead (`credential_warnings`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Kept for readers of old records and for the last-resort placeholder below.
REDACTED = "[REDACTED]"
SECRET_NAME = re.compile(
    r"(pass(word|phrase|wd)?|secret|token|api[_-]?key|auth(orization)?|credential|private[_-]?key|cookie|session[_-]?key)",
    re.IGNORECASE,
)
_REF = re.compile(r"^(\s*(Bearer |Basic |Token )?\$\{secret:[^}]*\}\s*)+$")
CREDENTIAL_WARNING = ("looks like a credential: it is shown and recorded exactly as the agent sent it "
                      "(a vault secret would appear as ${secret:NAME})")
MAX_WARNINGS = 20


class SecretValue(str):
    """A value the vault resolved for this call (or one of its encodings), with its secret's name."""

    ref: str

    def __new__(cls, value: str, name: str) -> SecretValue:
        s = super().__new__(cls, value)
        s.ref = name
        return s


def placeholder(name: str | None) -> str:
    return "${secret:" + name + "}" if name is not None else "${secret}"


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """`value` with every vault-resolved value replaced by its `${secret:NAME}` reference.

    Without secrets it is `value` itself: nothing the agent sent is hidden or changed.
    """
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not values:
        return value
    subs = [(s, _safe_placeholder(s, values)) for s in values]
    return _walk(value, subs)


def _safe_placeholder(s: str, values: list[str]) -> str:
    """The reference for `s`, unless some secret value is itself part of that text (a tiny value
    like `ret`), in which case a placeholder that contains none of them."""
    for cand in (placeholder(getattr(s, "ref", None)), placeholder(None), REDACTED, "*", ""):
        if not any(v in cand for v in values):
            return cand
    return ""  # pragma: no cover - "" contains no non-empty value


def _walk(v: Any, subs: list[tuple[str, str]]) -> Any:
    # Iterative: arguments may be nested deeper than Python's recursion limit.
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(v, root, 0)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, dict):
            d: dict[Any, Any] = {}
            parent[key] = d
            for k, x in item.items():
                d[k] = None
                stack.append((x, d, k))
        elif isinstance(item, list | tuple):
            lst: list[Any] = [None] * len(item)
            parent[key] = lst
            for i, x in enumerate(item):
                stack.append((x, lst, i))
        elif isinstance(item, str):
            for s, ph in subs:
                if s in item:
                    item = item.replace(s, ph)
            parent[key] = item
        elif isinstance(item, bytes):
            for s, ph in subs:
                item = item.replace(s.encode(), ph.encode())
            parent[key] = item
        else:
            parent[key] = item
    return root[0]


def credential_warnings(args: Any) -> list[dict[str, str]]:
    """Where a key looks like a credential and its value is the agent's own text (not a vault
    reference): a warning for the owner, never a reason to hide the value."""
    out: list[dict[str, str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(args, ())]
    while stack and len(out) < MAX_WARNINGS:
        v, path = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if (isinstance(k, str) and SECRET_NAME.search(k) and isinstance(x, str) and x
                        and not _REF.match(x)):
                    out.append({"path": "/".join(str(p) for p in (*path, k)), "warning": CREDENTIAL_WARNING})
                stack.append((x, (*path, k)))
        elif isinstance(v, list | tuple):
            stack.extend((x, (*path, i)) for i, x in enumerate(v))
    return sorted(out, key=lambda w: w["path"])
