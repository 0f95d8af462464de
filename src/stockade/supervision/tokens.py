"""The owner's admin token for the dashboard and `/api/*` (only its SHA-256 is stored).

`stockade admin token` issues a fresh token and invalidates the previous one (and with it every
dashboard session made with it). Comparison is constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import time

from stockade.core import db as _db

PREFIX = "sta_"

_db.SCHEMA.append("""CREATE TABLE IF NOT EXISTS admin_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash BLOB NOT NULL,
    created_at REAL NOT NULL
)""")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue(conn: sqlite3.Connection) -> str:
    """Create or replace the admin token; return it (the only time it exists in clear)."""
    token = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    conn.execute("INSERT INTO admin_token(id, token_hash, created_at) VALUES (1, ?, ?) "
                 "ON CONFLICT(id) DO UPDATE SET token_hash=excluded.token_hash, created_at=excluded.created_at",
                 (token_hash(token), time.time()))
    return token


def current_hash(conn: sqlite3.Connection) -> bytes | None:
    r = conn.execute("SELECT token_hash FROM admin_token WHERE id=1").fetchone()
    return bytes(r[0]) if r else None


def check(conn: sqlite3.Connection, token: str | None) -> bytes | None:
    """The stored hash if `token` is the current admin token, else None."""
    if not token or not isinstance(token, str) or len(token) > 200:
        return None
    stored = current_hash(conn)
    if stored is None:
        return None
    return stored if hmac.compare_digest(stored, token_hash(token)) else None
