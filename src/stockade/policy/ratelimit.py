"""Rate-limit counters: sliding windows per (agent, rule), persisted in SQLite.

Memory holds, per (agent, rule), a deque of the newest `max` hit timestamps: that is all a
sliding window "at most max per window" needs (the limit is reached when the max-th newest hit
is still inside the window), so memory is bounded by the rule's `max`. Each hit is also written
to `policy_rate_hits` (one INSERT, WAL, no fsync per commit) so a restart — or a crash — does not
reset anyone's window. Old rows are pruned as they fall out of use.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from typing import Any

from stockade.core import db as _db
from stockade.policy.model import MAX_WINDOW, Rule

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS policy_rate_hits (
        agent TEXT NOT NULL,
        rule TEXT NOT NULL,
        ts REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS policy_rate_hits_key ON policy_rate_hits(agent, rule, ts)",
]
for _stmt in SCHEMA:
    if _stmt not in _db.SCHEMA:
        _db.SCHEMA.append(_stmt)

PRUNE_EVERY = 1000


class RateLimiter:
    def __init__(self, conn: sqlite3.Connection | None, *, now: float | None = None, readonly: bool = False):
        self.conn = conn
        self.readonly = readonly
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._stored: dict[tuple[str, str], list[float]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._since_prune = 0
        self._last = 0.0              # newest hit time seen (prunes use the caller's clock)
        if conn is not None:
            if not readonly:
                # never stall the event loop for long on a locked database: fail (closed) instead
                conn.execute("PRAGMA busy_timeout=1000")
            t = time.time() if now is None else now
            for agent, rule, ts in conn.execute(
                    "SELECT agent, rule, ts FROM policy_rate_hits WHERE ts > ? ORDER BY ts", (t - MAX_WINDOW,)):
                self._stored.setdefault((agent, rule), []).append(ts)

    def window(self, agent: str, rule: Rule) -> deque[float]:
        """The newest hits of (agent, rule), ascending (a live view; do not modify)."""
        k = (agent, rule.key)
        m = rule.rate_max or 1
        dq = self._hits.get(k)
        if dq is None or dq.maxlen != m:
            old = list(dq) if dq is not None else self._stored.pop(k, [])
            dq = deque(old[-m:], maxlen=m)
            self._hits[k] = dq
        return dq

    def hit(self, agent: str, rule: Rule, now: float) -> None:
        dq = self.window(agent, rule)
        dq.append(now)
        self._last = max(self._last, now)
        if self.conn is None or self.readonly:
            return
        self.conn.execute("INSERT INTO policy_rate_hits(agent, rule, ts) VALUES (?, ?, ?)", (agent, rule.key, now))
        self._dirty.add((agent, rule.key))
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Drop rows no window can need: older than 31 days, or older than the kept newest `max`."""
        if self.conn is None or self.readonly:
            return
        self._since_prune = 0
        self.conn.execute("DELETE FROM policy_rate_hits WHERE ts <= ?", (now - MAX_WINDOW,))
        for k in self._dirty:
            dq = self._hits.get(k)
            if dq is not None and dq.maxlen is not None and len(dq) == dq.maxlen:
                self.conn.execute("DELETE FROM policy_rate_hits WHERE agent=? AND rule=? AND ts < ?",
                                  (k[0], k[1], dq[0]))
        self._dirty.clear()

    def close(self) -> None:
        if self.conn is not None:
            try:
                if not self.readonly and self._last:
                    self.prune(self._last)
            finally:
                self.conn.close()
                self.conn = None

    def snapshot(self) -> dict[str, Any]:
        return {"keys": len(self._hits) + len(self._stored)}
