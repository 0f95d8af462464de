"""Sessions: one MCP connection, or one explicit JSON-RPC `session.create`."""

from __future__ import annotations

import secrets
import sqlite3
import time

from stockade.core.errors import err


def create(db: sqlite3.Connection, agent: str, transport: str) -> str:
    sid = "ses_" + secrets.token_urlsafe(16)
    db.execute("INSERT INTO sessions(id, agent, transport, created_at) VALUES (?,?,?,?)",
               (sid, agent, transport, int(time.time())))
    return sid


def check(db: sqlite3.Connection, agent: str, sid: str) -> None:
    r = db.execute("SELECT agent, ended_at FROM sessions WHERE id=?", (sid,)).fetchone()
    if r is None or r[0] != agent or r[1] is not None:
        raise err("InvalidInput", f"unknown or ended session {sid!r}",
                  [{"action": "create_session", "description": "Call session.create for a new session."}])


def end(db: sqlite3.Connection, agent: str, sid: str) -> None:
    check(db, agent, sid)
    db.execute("UPDATE sessions SET ended_at=? WHERE id=?", (int(time.time()), sid))
