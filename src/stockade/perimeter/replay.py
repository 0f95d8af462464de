"""The replay cache: SHA-256 of every authenticated packet, in SQLite, across restarts.

Only packets whose timestamp is inside the ±max_skew window can be accepted, so a digest can be
forgotten once it is older than 2 × max_skew (plus a margin): the table stays bounded. Lookups
hit an in-memory copy (cheap, before any crypto); inserts go to SQLite first, so a restart never
forgets a digest that could still be replayed.
"""

from __future__ import annotations

import hashlib
import sqlite3

from stockade.core import db

db.SCHEMA.append("""CREATE TABLE IF NOT EXISTS perimeter_replay (
    digest BLOB PRIMARY KEY,
    seen_at INTEGER NOT NULL
)""")
db.SCHEMA.append("CREATE INDEX IF NOT EXISTS perimeter_replay_seen ON perimeter_replay(seen_at)")

MARGIN = 10


def packet_digest(wire: bytes) -> bytes:
    """The replay key: SHA-256 of the raw datagram (as fwknopd does)."""
    return hashlib.sha256(wire).digest()


class ReplayCache:
    def __init__(self, conn: sqlite3.Connection, max_skew: int, now: float):
        self.conn = conn
        self.keep = 2 * max_skew + MARGIN
        self.prune(now)
        self._mem: dict[bytes, int] = dict(conn.execute("SELECT digest, seen_at FROM perimeter_replay"))

    def seen(self, digest: bytes) -> bool:
        return digest in self._mem

    def add(self, digest: bytes, now: float) -> bool:
        """Record a digest; False if it was already there (a replay, possibly from another process)."""
        cur = self.conn.execute("INSERT OR IGNORE INTO perimeter_replay(digest, seen_at) VALUES (?, ?)",
                                (digest, int(now)))
        self._mem[digest] = int(now)
        return cur.rowcount == 1

    def prune(self, now: float) -> int:
        cutoff = int(now) - self.keep
        cur = self.conn.execute("DELETE FROM perimeter_replay WHERE seen_at < ?", (cutoff,))
        if hasattr(self, "_mem"):
            self._mem = {d: t for d, t in self._mem.items() if t >= cutoff}
        return cur.rowcount

    def __len__(self) -> int:
        return len(self._mem)
