"""`stockade.db`: one SQLite file (WAL) shared by the parts, each owning its tables.

Parts append their `CREATE TABLE IF NOT EXISTS` statements to SCHEMA at import time; `connect`
applies all of them, so any process (server or offline CLI) sees the same schema.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS agents (
        name TEXT PRIMARY KEY,
        key_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        rotated_at INTEGER,
        revoked_at INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        transport TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        ended_at INTEGER
    )""",
]


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating 0600 if needed) with WAL, a busy timeout and every part's schema."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    for stmt in SCHEMA:
        conn.execute(stmt)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.chmod(side, 0o600)
    return conn
