"""`stockade.db`: one SQLite file (WAL) shared by the parts, each owning its tables.

Parts append their `CREATE TABLE IF NOT EXISTS` statements to SCHEMA at import time; `connect`
applies all of them, so any process (server or offline CLI) sees the same schema.

Another process may hold the write lock for as long as it likes (`sqlite3 stockade.db 'BEGIN
EXCLUSIVE'`, a backup tool). A statement run on the gateway's event loop must not wait for it:
every call and the admin socket share that thread. So a connection waits for the lock at most
`LOOP_BUSY_SECONDS` when it runs on a thread with a running event loop (and not at all for
`COOLDOWN_SECONDS` after it found the lock held), `SERVER_BUSY_SECONDS` in a gateway's worker
threads (a longer wait would fill the thread pool every `to_thread` shares) and the full
`BUSY_TIMEOUT_SECONDS` in the offline CLI. A statement that still finds the database locked raises `DbUnavailable`:
a `StockadeError` of type `Unavailable` with `retry_after`, so the call that needed the write is
refused with a typed error and audited, never an `Internal` or a stalled gateway.
`check_tables` is the start-up check that names a damaged table instead of failing later.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from stockade.core.errors import StockadeError

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

BUSY_TIMEOUT_SECONDS = 10.0   # the offline CLI may wait
SERVER_BUSY_SECONDS = 2.0     # a gateway's worker thread: a long wait would fill the shared thread pool
LOOP_BUSY_SECONDS = 0.2       # on the event loop: every call shares the thread
COOLDOWN_SECONDS = 1.0        # after a lock was found held, the loop does not wait at all
RETRY_AFTER_SECONDS = 1.0
_serving = False


def serving() -> None:
    """Called once by `serve`: worker threads of this process wait `SERVER_BUSY_SECONDS` at most."""
    global _serving
    _serving = True


class DbUnavailable(StockadeError, sqlite3.OperationalError):
    """stockade.db is locked by someone else; retry later. Still an OperationalError, so code that
    already handles sqlite errors keeps doing so."""


def unavailable(cause: BaseException | None = None) -> DbUnavailable:
    why = f" ({cause})" if cause is not None else ""
    return DbUnavailable("Unavailable", f"the gateway's database is busy (locked by another process){why}; "
                                        "try again shortly",
                         [{"action": "retry_later", "description": "Retry after 'retry_after' seconds."}],
                         {"retry_after": RETRY_AFTER_SECONDS})


def is_busy(e: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED, as the sqlite3 module reports them."""
    if not isinstance(e, sqlite3.OperationalError) or isinstance(e, DbUnavailable):
        return False
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)   # SQLITE_BUSY, SQLITE_LOCKED (extended codes keep the low byte)
    text = str(e)
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _on_loop() -> bool:
    return asyncio._get_running_loop() is not None


class Connection(sqlite3.Connection):
    """A connection that never lets a lock held elsewhere stall an event loop (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wait_ms = -1
        self._cool_until = 0.0

    def _budget(self) -> int:
        if not _on_loop():
            return int((SERVER_BUSY_SECONDS if _serving else BUSY_TIMEOUT_SECONDS) * 1000)
        return 0 if time.monotonic() < self._cool_until else int(LOOP_BUSY_SECONDS * 1000)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        wait = self._budget()
        if wait != self._wait_ms:
            super().execute(f"PRAGMA busy_timeout={wait}")
            self._wait_ms = wait
        if "busy_timeout" in sql:   # the caller sets its own: the next statement applies ours again
            self._wait_ms = -1
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise
            if _on_loop():
                self._cool_until = time.monotonic() + COOLDOWN_SECONDS
            raise unavailable(e) from e


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating 0600 if needed) with WAL, a busy timeout and every part's schema."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                           check_same_thread=check_same_thread, factory=Connection)
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


def write_lock_held(path: Path) -> bool:
    """Is the write lock held by someone right now? One `BEGIN IMMEDIATE` that does not wait,
    rolled back at once (blocking: run it off the event loop). For health, not for decisions."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as e:
        return is_busy(e)
    finally:
        conn.close()


def damaged_tables(conn: sqlite3.Connection) -> list[str]:
    """Tables of this database that fail SQLite's quick check (empty: all intact).

    One `PRAGMA quick_check` over the file first (milliseconds for a healthy home); only when it
    finds something is each table checked on its own, to name what is damaged."""
    if _quick_check(conn, "PRAGMA quick_check"):
        return []
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    except sqlite3.DatabaseError:
        return ["sqlite_master"]
    bad = [name for name in names if not _quick_check(conn, f'PRAGMA quick_check("{name}")')]
    return bad or ["(no single table: the file-level check failed)"]


def _quick_check(conn: sqlite3.Connection, pragma: str) -> bool:
    """True when the check says "ok"; a check that cannot even step over the damage is a failure."""
    try:
        return [r[0] for r in conn.execute(pragma)] == ["ok"]
    except sqlite3.DatabaseError:
        return False
