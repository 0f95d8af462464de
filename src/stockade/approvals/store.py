"""SQLite persistence of approvals and time-limited grants (tables in `stockade.db`).

`args_redacted` (a historical column name) holds the exact arguments the agent sent, canonical
JSON: what the owner approves and what runs. Secrets are never in them: the agent can only name
a vault secret by reference (`${secret:NAME}`), resolved after the approval. `args_json` is the
copy the background executor runs; it is cleared once the approval is final. Results are stored
with vault values replaced by their references.

An approval also binds the key that asked for it (`approval_keys`): the call runs only while
that key is still valid, whether the held call or the background executor runs it.
"""

# ruff: noqa: S608  (SQL is built only from the constant column lists below; values are bound)
from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from stockade.approvals.core import APPROVED, EXPIRED, PENDING
from stockade.audit.redact import credential_warnings
from stockade.core import agents as _agents
from stockade.core import db as _db
from stockade.core.encoding import canonical_json

MAX_RESULT_BYTES = 1 << 20

_db.SCHEMA.append("""CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    capability TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    args_json TEXT,
    args_redacted TEXT NOT NULL,
    tier TEXT, rule TEXT, layer TEXT, policy_reason TEXT,
    call_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    reason TEXT,
    exec_call_id TEXT,
    finished_at REAL,
    result_json TEXT,
    error_json TEXT
)""")
_db.SCHEMA.append("CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, created_at)")
_db.SCHEMA.append("CREATE INDEX IF NOT EXISTS approvals_match ON approvals(agent, capability, args_hash, status)")
_db.SCHEMA.append("""CREATE TABLE IF NOT EXISTS approval_grants (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    capability TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    created_by TEXT,
    reason TEXT,
    approval TEXT,
    revoked_at REAL
)""")

_db.SCHEMA.append("""CREATE TABLE IF NOT EXISTS approval_keys (
    approval TEXT PRIMARY KEY,
    key_hash BLOB NOT NULL
)""")
REVOKED_REASON = "agent revoked"
# An agent withdrew its own request (MCP `tasks/cancel`): ended like an expiry, never approvable again.
WITHDRAWN_REASON = "withdrawn by the agent"

_COLS = ("id", "agent", "session", "capability", "args_hash", "args_json", "args_redacted", "tier", "rule",
         "layer", "policy_reason", "call_id", "created_at", "expires_at", "status", "decided_at", "decided_by",
         "reason", "exec_call_id", "finished_at", "result_json", "error_json")
_GCOLS = ("id", "agent", "capability", "created_at", "expires_at", "created_by", "reason", "approval", "revoked_at")


@dataclass
class Approval:
    id: str
    agent: str
    session: str
    capability: str
    args_hash: str
    args_json: str | None
    args_redacted: str
    tier: str | None
    rule: str | None
    layer: str | None
    policy_reason: str | None
    call_id: str | None
    created_at: float
    expires_at: float
    status: str
    decided_at: float | None
    decided_by: str | None
    reason: str | None
    exec_call_id: str | None
    finished_at: float | None
    result_json: str | None
    error_json: str | None

    def public(self, *, owner: bool = True) -> dict[str, Any]:
        """JSON view (never the raw arguments). `owner=False` is what the agent sees."""
        out: dict[str, Any] = {
            "approval": self.id, "status": self.status, "agent": self.agent, "capability": self.capability,
            "args": json.loads(self.args_redacted), "args_hash": self.args_hash,
            "created": self.created_at, "expires": self.expires_at,
        }
        if owner:
            out.update({"session": self.session, "tier": self.tier, "rule": self.rule, "layer": self.layer,
                        "policy_reason": self.policy_reason, "call": self.call_id})
        if owner:
            out["warnings"] = credential_warnings(out["args"])
        if self.decided_at is not None:
            out.update({"decided": self.decided_at, "decided_by": decode_by(self.decided_by)})
        if self.reason:
            out["reason"] = self.reason
        if self.finished_at is not None:
            out["finished"] = self.finished_at
        if self.result_json is not None:
            out["result"] = json.loads(self.result_json)
        if self.error_json is not None:
            out["error"] = json.loads(self.error_json)
        return out


@dataclass
class Grant:
    id: str
    agent: str
    capability: str
    created_at: float
    expires_at: float
    created_by: str | None
    reason: str | None
    approval: str | None
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        return {"grant": self.id, "agent": self.agent, "capability": self.capability, "created": self.created_at,
                "expires": self.expires_at, "created_by": decode_by(self.created_by), "reason": self.reason,
                "approval": self.approval, "revoked": self.revoked_at}


def encode_by(by: str | dict[str, Any]) -> str:
    """Who decided: a dict (peer credentials, dashboard session) is stored as JSON text."""
    return by if isinstance(by, str) else canonical_json(by, ascii=True, allow_nan=True)


def decode_by(raw: str | None) -> str | dict[str, Any] | None:
    if raw is not None and raw.startswith("{"):
        try:
            v = json.loads(raw)
        except ValueError:
            return raw
        return v if isinstance(v, dict) else raw
    return raw


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def insert(conn: sqlite3.Connection, a: Approval, key_hash: bytes) -> None:
    """The approval and the key that asked for it, together."""
    conn.execute("SAVEPOINT approval_insert")
    try:
        conn.execute(f"INSERT INTO approvals({','.join(_COLS)}) VALUES ({','.join('?' * len(_COLS))})",
                     tuple(getattr(a, c) for c in _COLS))
        conn.execute("INSERT OR REPLACE INTO approval_keys(approval, key_hash) VALUES (?, ?)", (a.id, key_hash))
    except BaseException:
        conn.execute("ROLLBACK TO approval_insert")
        conn.execute("RELEASE approval_insert")
        raise
    conn.execute("RELEASE approval_insert")


def key_of(conn: sqlite3.Connection, aid: str) -> bytes | None:
    r = conn.execute("SELECT key_hash FROM approval_keys WHERE approval=?", (aid,)).fetchone()
    return bytes(r[0]) if r else None


def key_valid(conn: sqlite3.Connection, agent: str, key_hash: bytes | None) -> bool:
    """Is this still the agent's key, and the agent not revoked? (the re-check after a wait)"""
    if not key_hash:
        return False
    r = conn.execute("SELECT revoked_at FROM agents WHERE name=? AND key_hash=?", (agent, key_hash)).fetchone()
    return r is not None and r[0] is None


def _end_for_revoked_agent(conn: sqlite3.Connection, agent: str, now: float) -> dict[str, list[str]]:
    """`core.agents.ON_REVOKE`: in the revoke's transaction, approvals that have not started
    expire (they can no longer be approved or run) and the agent's live grants end."""
    ids = [r[0] for r in conn.execute("SELECT id FROM approvals WHERE agent=? AND status IN (?, ?) "
                                      "ORDER BY created_at", (agent, PENDING, APPROVED)).fetchall()]
    conn.execute("UPDATE approvals SET status=?, args_json=NULL, finished_at=?, reason=? "
                 "WHERE agent=? AND status IN (?, ?)", (EXPIRED, now, REVOKED_REASON, agent, PENDING, APPROVED))
    gids = [r[0] for r in conn.execute("SELECT id FROM approval_grants WHERE agent=? AND revoked_at IS NULL "
                                       "AND expires_at>? ORDER BY created_at", (agent, now)).fetchall()]
    conn.execute("UPDATE approval_grants SET revoked_at=? WHERE agent=? AND revoked_at IS NULL AND expires_at>?",
                 (now, agent, now))
    return {"approvals": ids, "grants": gids}


_agents.ON_REVOKE.append(_end_for_revoked_agent)


def get(conn: sqlite3.Connection, aid: str) -> Approval | None:
    r = conn.execute(f"SELECT {','.join(_COLS)} FROM approvals WHERE id=?", (aid,)).fetchone()
    return Approval(*r) if r else None


def find_pending(conn: sqlite3.Connection, agent: str, capability: str, h: str, now: float) -> Approval | None:
    r = conn.execute(f"SELECT {','.join(_COLS)} FROM approvals WHERE agent=? AND capability=? AND args_hash=? "
                     "AND status=? AND expires_at>? ORDER BY created_at LIMIT 1",
                     (agent, capability, h, PENDING, now)).fetchone()
    return Approval(*r) if r else None


def list_(conn: sqlite3.Connection, *, status: str | None = None, agent: str | None = None,
          limit: int = 200) -> list[Approval]:
    q = f"SELECT {','.join(_COLS)} FROM approvals WHERE 1=1"
    params: list[Any] = []
    if status:
        q += " AND status=?"
        params.append(status)
    if agent:
        q += " AND agent=?"
        params.append(agent)
    q += " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    return [Approval(*r) for r in conn.execute(q, params).fetchall()]


def count_pending(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM approvals WHERE status=?", (PENDING,)).fetchone()[0]


def set_status(conn: sqlite3.Connection, aid: str, new: str, *, only_from: str | None = None,
               **fields: Any) -> bool:
    """Update status (and fields); with `only_from`, only if the current status is that (a claim)."""
    assert set(fields) <= set(_COLS), fields
    sets = ["status=?", *[f"{k}=?" for k in fields]]
    params: list[Any] = [new, *fields.values()]
    q = f"UPDATE approvals SET {','.join(sets)} WHERE id=?"
    params.append(aid)
    if only_from is not None:
        q += " AND status=?"
        params.append(only_from)
    return conn.execute(q, params).rowcount == 1


def set_fields(conn: sqlite3.Connection, aid: str, **fields: Any) -> None:
    assert set(fields) <= set(_COLS), fields
    conn.execute(f"UPDATE approvals SET {','.join(f'{k}=?' for k in fields)} WHERE id=?", (*fields.values(), aid))


def encode_result(value: Any) -> str:
    s = json.dumps(value, separators=(",", ":"), default=str)
    if len(s) > MAX_RESULT_BYTES:
        return json.dumps({"truncated": True, "bytes": len(s)})
    return s


def due_for_expiry(conn: sqlite3.Connection, now: float) -> list[Approval]:
    rows = conn.execute(f"SELECT {','.join(_COLS)} FROM approvals WHERE status=? AND expires_at<=?",
                        (PENDING, now)).fetchall()
    return [Approval(*r) for r in rows]


# -- grants ---------------------------------------------------------------------------------
def insert_grant(conn: sqlite3.Connection, g: Grant) -> None:
    conn.execute(f"INSERT INTO approval_grants({','.join(_GCOLS)}) VALUES ({','.join('?' * len(_GCOLS))})",
                 tuple(getattr(g, c) for c in _GCOLS))


def live_grant(conn: sqlite3.Connection, agent: str, capability: str, now: float) -> Grant | None:
    r = conn.execute(f"SELECT {','.join(_GCOLS)} FROM approval_grants WHERE agent=? AND capability=? "
                     "AND revoked_at IS NULL AND expires_at>? ORDER BY expires_at DESC LIMIT 1",
                     (agent, capability, now)).fetchone()
    return Grant(*r) if r else None


def list_grants(conn: sqlite3.Connection, *, live_only: bool, now: float) -> list[Grant]:
    q = f"SELECT {','.join(_GCOLS)} FROM approval_grants"
    params: list[Any] = []
    if live_only:
        q += " WHERE revoked_at IS NULL AND expires_at>?"
        params.append(now)
    q += " ORDER BY created_at DESC LIMIT 200"
    return [Grant(*r) for r in conn.execute(q, params).fetchall()]


def get_grant(conn: sqlite3.Connection, gid: str) -> Grant | None:
    r = conn.execute(f"SELECT {','.join(_GCOLS)} FROM approval_grants WHERE id=?", (gid,)).fetchone()
    return Grant(*r) if r else None


def revoke_grant(conn: sqlite3.Connection, gid: str, now: float) -> bool:
    return conn.execute("UPDATE approval_grants SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                        (now, gid)).rowcount == 1
