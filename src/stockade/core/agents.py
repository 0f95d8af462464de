"""Agents and their keys (docs/design.md "Agents and keys").

A key is `stk_` + 43 chars of base64url (32 random bytes), shown once. Only SHA-256 of it is
stored; lookup is by hash (an index probe, so no timing signal about other keys) and the found
hash is compared again in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import StockadeError, err

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
RESERVED = frozenset({"system", "admin", "default", "owner"})
KEY_RE = re.compile(r"^stk_[A-Za-z0-9_-]{43}$")

# What else ends when an agent is revoked, in the revoke's own transaction. A part that holds
# something an agent may still use later (approvals waiting to run, time-limited grants) appends
# `fn(conn, agent, now) -> {kind: [ids ended]}` at import time, as parts append their tables to
# `core.db.SCHEMA`; the ids go into the audit record of the revocation.
RevokeHook = Callable[[sqlite3.Connection, str, float], dict[str, list[str]]]
ON_REVOKE: list[RevokeHook] = []


@dataclass(frozen=True)
class Agent:
    name: str
    created_at: int
    rotated_at: int | None = None
    revoked_at: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_key() -> str:
    return "stk_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise err("InvalidInput", f"invalid agent name {name!r}: use [a-z][a-z0-9-]{{0,31}}")
    if name in RESERVED:
        raise err("InvalidInput", f"agent name {name!r} is reserved")


def _row(r: tuple[Any, ...]) -> Agent:
    return Agent(r[0], r[1], r[2], r[3])


def create(conn: sqlite3.Connection, name: str) -> str:
    """Create an agent; return its key (the only time it exists in clear)."""
    check_name(name)
    key = new_key()
    try:
        conn.execute(
            "INSERT INTO agents(name, key_hash, created_at) VALUES (?,?,?)", (name, key_hash(key), int(time.time()))
        )
    except sqlite3.IntegrityError:
        raise err("InvalidInput", f"agent {name!r} already exists", [
            {"action": "rotate", "description": f"stockade agent rotate {name} issues a new key"}]) from None
    return key


def get(conn: sqlite3.Connection, name: str) -> Agent:
    r = conn.execute("SELECT name, created_at, rotated_at, revoked_at FROM agents WHERE name=?", (name,)).fetchone()
    if r is None:
        raise err("InvalidInput", f"no agent named {name!r}")
    return _row(r)


def list_all(conn: sqlite3.Connection) -> list[Agent]:
    rows = conn.execute("SELECT name, created_at, rotated_at, revoked_at FROM agents ORDER BY name").fetchall()
    return [_row(r) for r in rows]


def revoke(conn: sqlite3.Connection, name: str) -> Agent:
    revoke_ending(conn, name)
    return get(conn, name)


def revoke_ending(conn: sqlite3.Connection, name: str) -> dict[str, list[str]]:
    """Revoke the key and, in the same transaction, end everything registered in ON_REVOKE
    (pending and approved-but-unstarted approvals expire, grants end). Returns what ended."""
    get(conn, name)
    now = time.time()
    ended: dict[str, list[str]] = {}
    conn.execute("SAVEPOINT agent_revoke")
    try:
        conn.execute("UPDATE agents SET revoked_at=COALESCE(revoked_at, ?) WHERE name=?", (int(now), name))
        for hook in ON_REVOKE:
            for kind, ids in hook(conn, name, now).items():
                ended.setdefault(kind, []).extend(ids)
    except BaseException:
        conn.execute("ROLLBACK TO agent_revoke")
        conn.execute("RELEASE agent_revoke")
        raise
    conn.execute("RELEASE agent_revoke")
    return ended


def rotate(conn: sqlite3.Connection, name: str, *, reactivate: bool = False) -> str:
    """Issue a new key (the old one stops working at once).

    A revoked agent stays revoked unless the owner asks for `reactivate` explicitly: a routine
    key rotation must never bring back an agent someone deliberately shut out.
    """
    a = get(conn, name)
    if not a.active and not reactivate:
        raise err("InvalidInput", f"agent {name!r} is revoked; rotating its key would not reactivate it", [
            {"action": "reactivate", "description": f"stockade agent reactivate {name} (or agent rotate {name} "
                                                    "--reactivate) issues a new key and reactivates the agent"}])
    key = new_key()
    conn.execute(
        "UPDATE agents SET key_hash=?, rotated_at=?, revoked_at=NULL WHERE name=?",
        (key_hash(key), int(time.time()), name),
    )
    return key


def authenticate(conn: sqlite3.Connection, key: str | None) -> Agent:
    """Agent for a bearer key, or `Unauthenticated` (same message for missing/wrong/revoked)."""
    if not key or not KEY_RE.match(key):
        raise _unauth()
    h = key_hash(key)
    r = conn.execute(
        "SELECT name, created_at, rotated_at, revoked_at, key_hash FROM agents WHERE key_hash=?", (h,)
    ).fetchone()
    if r is None or not hmac.compare_digest(r[4], h) or r[3] is not None:
        raise _unauth()
    return _row(r[:4])


def _unauth() -> StockadeError:
    return err("Unauthenticated", "missing, unknown or revoked agent key")
