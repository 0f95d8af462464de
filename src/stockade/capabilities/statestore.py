"""Agent state (`state.*`): per-agent durable key-value pairs in the gateway's `stockade.db`.

An agent keeps small JSON values between sessions. The store lives in the gateway's SQLite
(WAL), never in the sandbox: the capabilities run in-process and the agent reaches its state
only through the pipeline (authenticated, decided by policy, audited).

Isolation: every row is keyed by `(agent, key)` and every statement names the agent, which the
caller's authenticated identity supplies (`Caller.agent`), never an argument. A key is just a
string inside that agent's namespace; there is no syntax that names another agent's keys.

Versions: each agent has a clock (`state_usage.clock`) that every write advances; a key's
version is the clock value of its last write. Versions therefore never repeat for a key, even
across delete, re-create or expiry, so a compare-and-set can never succeed against an older
incarnation of the key (no ABA).

Quotas: `state_usage` holds each agent's live keys and bytes, kept exact by triggers on
`state_kv` (every insert, update and delete, including expiry sweeps). A write is checked
against the quota inside the same `BEGIN IMMEDIATE` transaction that makes it, so concurrent
writers cannot overshoot, and a compare-and-set is atomic across threads and processes.

Expiry: a key with a TTL is invisible from its expiry on (every read filters on the time);
rows are deleted lazily (the writing agent's expired keys at each write) and periodically (a
bounded global sweep, at most once per `SWEEP_EVERY` seconds, from any write).

The pure half (key, prefix, value, cursor, TTL, quota and version checks) is unit-tested on its
own; `StateStore` is the imperative shell around one SQLite connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade.core import db as _db
from stockade.core.encoding import canonical_json
from stockade.core.errors import err
from stockade.core.limits import MAX_STATE_VALUE_DEPTH

__all__ = ["KEY_PATTERN", "Entry", "Limits", "StateStore", "Usage", "check_key", "check_prefix",
           "check_quota", "check_version", "decode_cursor", "encode_cursor", "encode_value", "prefix_bounds"]

# Printable ASCII without space, quotes, backslash, `%`, `*`, `?`, `#` and control characters:
# readable in logs and the dashboard, no escaping anywhere, no Unicode look-alikes.
KEY_MAX = 256
# (matched with `fullmatch`: Python's `$` would also match before a trailing newline)
KEY_PATTERN = r"[A-Za-z0-9_.:/@+=,~-]{1,256}"
PREFIX_PATTERN = r"[A-Za-z0-9_.:/@+=,~-]{0,256}"
_KEY_RE = re.compile(KEY_PATTERN)
_PREFIX_RE = re.compile(PREFIX_PATTERN)
_ABOVE_KEY_CHARS = "\x7f"              # sorts after every character a key may hold
MAX_TTL_SECONDS = 366 * 86400
LIST_MAX = 1000
SWEEP_EVERY = 60.0                     # seconds between global sweeps of expired keys
SWEEP_BATCH = 1000                     # rows one sweep deletes at most

_db.SCHEMA.extend([
    # `value` is the last column: listing reads the metadata without the value's overflow pages.
    """CREATE TABLE IF NOT EXISTS state_kv (
        agent TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER,
        value TEXT NOT NULL,
        UNIQUE (agent, key)
    )""",
    "CREATE INDEX IF NOT EXISTS state_kv_expiry ON state_kv(expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS state_usage (
        agent TEXT PRIMARY KEY,
        keys INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        clock INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TRIGGER IF NOT EXISTS state_kv_insert AFTER INSERT ON state_kv BEGIN
        INSERT INTO state_usage(agent, keys, bytes) VALUES (NEW.agent, 1, NEW.bytes)
        ON CONFLICT(agent) DO UPDATE SET keys = keys + 1, bytes = bytes + NEW.bytes;
    END""",
    """CREATE TRIGGER IF NOT EXISTS state_kv_delete AFTER DELETE ON state_kv BEGIN
        UPDATE state_usage SET keys = keys - 1, bytes = bytes - OLD.bytes WHERE agent = OLD.agent;
    END""",
    """CREATE TRIGGER IF NOT EXISTS state_kv_update AFTER UPDATE OF bytes ON state_kv BEGIN
        UPDATE state_usage SET bytes = bytes - OLD.bytes + NEW.bytes WHERE agent = NEW.agent;
    END""",
])


@dataclass(frozen=True)
class Limits:
    """Per-agent quotas and per-value bounds (stockade.yaml `state:`)."""

    max_keys: int = 1000
    max_bytes: int = 8 << 20
    max_value_bytes: int = 64 << 10


@dataclass(frozen=True)
class Entry:
    key: str
    version: int
    bytes: int
    updated_at: int            # unix ms
    expires_at: int | None     # unix ms, None: never
    value: Any = None

    def describe(self, with_value: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "version": self.version, "bytes": self.bytes,
                               "updated_at": iso(self.updated_at), "expires_at": iso(self.expires_at)}
        if with_value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class Usage:
    keys: int
    bytes: int

    def describe(self, limits: Limits) -> dict[str, int]:
        return {"keys": self.keys, "bytes": self.bytes, "max_keys": limits.max_keys, "max_bytes": limits.max_bytes,
                "max_value_bytes": limits.max_value_bytes}


# -- the pure half ---------------------------------------------------------------------------------
def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_key(key: Any) -> str:
    """A key, or InvalidInput (the schema says the same; this holds without it)."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise err("InvalidInput", f"key must be 1..{KEY_MAX} characters of A-Z a-z 0-9 _ . : / @ + = , ~ -",
                  argument="key")
    return key


def check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise err("InvalidInput", f"prefix must be 0..{KEY_MAX} characters a key may hold", argument="prefix")
    return prefix


def prefix_bounds(prefix: str, after: str | None) -> tuple[str, str | None]:
    """The key range `[low, high)` holding exactly the keys that start with `prefix`, less the
    keys up to and including `after` (a cursor). `high` is None when there is no upper bound."""
    low = prefix
    if after is not None and after >= low:
        low = after + "\x00"               # the smallest string greater than `after`
    return low, (prefix + _ABOVE_KEY_CHARS) if prefix else None


def _depth(value: Any) -> int:
    """Nesting of a JSON value (a scalar is 0), iteratively: a hostile value cannot recurse."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
            deepest = max(deepest, d + 1)
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
            deepest = max(deepest, d + 1)
        if deepest > MAX_STATE_VALUE_DEPTH:
            break
    return deepest


def encode_value(value: Any, max_bytes: int) -> str:
    """The canonical JSON of `value` (sorted keys, no spaces, UTF-8), or InvalidInput when it is
    nested deeper than MAX_STATE_VALUE_DEPTH, not JSON, or larger than `max_bytes` encoded."""
    if _depth(value) > MAX_STATE_VALUE_DEPTH:
        raise err("InvalidInput", f"value is nested deeper than {MAX_STATE_VALUE_DEPTH} levels",
                  argument="value", reason="depth", max_depth=MAX_STATE_VALUE_DEPTH)
    try:
        text = canonical_json(value)
        size = len(text.encode("utf-8"))     # strict: a lone surrogate is not storable text
    except (TypeError, ValueError) as e:     # (UnicodeEncodeError is a ValueError)
        raise err("InvalidInput", f"value is not JSON: {e}"[:200], argument="value") from None
    if size > max_bytes:
        raise err("InvalidInput", f"value is {size} bytes as canonical JSON; at most {max_bytes} are allowed",
                  argument="value", reason="too_large", bytes=size, max_value_bytes=max_bytes)
    return text


def encode_cursor(key: str) -> str:
    return "c1." + base64.urlsafe_b64encode(key.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: Any) -> str:
    """The last key of the previous page, or InvalidInput for anything `encode_cursor` did not make."""
    bad = err("InvalidInput", "cursor is not one state.list returned", argument="cursor")
    if not isinstance(cursor, str) or not cursor.startswith("c1.") or len(cursor) > 8 + 2 * KEY_MAX:
        raise bad
    body = cursor[3:]
    try:
        key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not _KEY_RE.fullmatch(key) or encode_cursor(key) != cursor:
        raise bad
    return key


def check_version(current: int | None, expected: Any, key: str) -> None:
    """Compare-and-set: `expected` None always passes; 0 means "the key must not exist"; any
    other number must be the key's current version. Conflict otherwise (nothing is changed)."""
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 0):
        raise err("InvalidInput", "expected_version must be an integer >= 0", argument="expected_version")
    if expected is None or expected == (current or 0):
        return
    why = ("does not exist" if current is None else
           f"already exists (version {current})" if expected == 0 else f"is at version {current}, not {expected}")
    raise err("Conflict", f"{key!r} {why}",
              [{"action": "reread", "description": "Read the key again (state.get), then retry with its version."}],
              key=key, expected_version=expected, current_version=current or 0)


def check_quota(usage: Usage, old_bytes: int | None, new_bytes: int, limits: Limits) -> None:
    """QuotaExceeded when replacing a value of `old_bytes` (None: a new key) by `new_bytes`
    would take the agent past its keys or bytes quota. Shrinking is always allowed."""
    keys = usage.keys + (1 if old_bytes is None else 0)
    total = usage.bytes - (old_bytes or 0) + new_bytes
    if old_bytes is None and keys > limits.max_keys:
        raise err("QuotaExceeded", f"this agent already holds {usage.keys} keys, the most it may hold",
                  quota="keys", used=usage.keys, limit=limits.max_keys)
    if total > limits.max_bytes and new_bytes > (old_bytes or 0):
        raise err("QuotaExceeded", f"this value would bring the agent's state to {total} bytes; "
                  f"the quota is {limits.max_bytes}", quota="bytes", used=usage.bytes, requested=new_bytes,
                  limit=limits.max_bytes)


def ttl_expiry(now_ms: int, ttl_seconds: Any) -> int | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float) \
            or not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise err("InvalidInput", f"ttl_seconds must be a number in (0, {MAX_TTL_SECONDS}]", argument="ttl_seconds")
    return now_ms + max(1, round(ttl_seconds * 1000))


# -- the imperative shell ------------------------------------------------------------------------
class StateStore:
    """One SQLite connection to `stockade.db` for agent state, used by one thread at a time.

    The connection syncs every commit (`synchronous=FULL`): a write the agent was told about
    survives a crash of the machine, not only of the gateway. Methods are blocking; the
    capabilities call them in a worker thread so the event loop never waits on the disk.
    """

    def __init__(self, path: Path, limits: Limits, clock: Callable[[], float] = time.time):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = _db.connect(path, check_same_thread=False)
        self._conn.execute("PRAGMA synchronous=FULL")
        self._next_sweep = 0.0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One `BEGIN IMMEDIATE` transaction: the write lock is taken before anything is read."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    # -- reads --------------------------------------------------------------------------------
    def get(self, agent: str, key: str) -> Entry | None:
        check_key(key)
        with self._lock:
            r = self._conn.execute("SELECT key, version, bytes, updated_at, expires_at, value FROM state_kv "
                                   "WHERE agent=? AND key=? AND (expires_at IS NULL OR expires_at > ?)",
                                   (agent, key, self._now_ms())).fetchone()
        return None if r is None else Entry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))

    def list(self, agent: str, prefix: str = "", limit: int = 100,
             cursor: str | None = None) -> tuple[list[Entry], str | None]:
        """One page of the agent's live keys starting with `prefix`, in key order, and the cursor
        of the next page (None on the last)."""
        check_prefix(prefix)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_MAX:
            raise err("InvalidInput", f"limit must be 1..{LIST_MAX}", argument="limit")
        after = decode_cursor(cursor) if cursor is not None else None
        low, high = prefix_bounds(prefix, after)
        with self._lock:   # two fixed statements: each bound is an index range, never a scan
            rows = self._conn.execute(
                "SELECT key, version, bytes, updated_at, expires_at FROM state_kv WHERE agent=? AND key >= ? "
                "AND key < ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?",
                (agent, low, high, self._now_ms(), limit + 1)
            ).fetchall() if high is not None else self._conn.execute(
                "SELECT key, version, bytes, updated_at, expires_at FROM state_kv WHERE agent=? AND key >= ? "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?",
                (agent, low, self._now_ms(), limit + 1)).fetchall()
        entries = [Entry(*r) for r in rows[:limit] if r[0].startswith(prefix)]
        more = len(rows) > limit
        return entries, encode_cursor(entries[-1].key) if more and entries else None

    def usage(self, agent: str) -> Usage:
        with self._lock:
            return self._usage(self._conn, agent, self._now_ms())

    @staticmethod
    def _usage(c: Any, agent: str, now_ms: int) -> Usage:
        """Live keys and bytes: the counters less the agent's expired rows not yet deleted."""
        r = c.execute("SELECT keys, bytes FROM state_usage WHERE agent=?", (agent,)).fetchone()
        keys, size = (r[0], r[1]) if r else (0, 0)
        e = c.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM state_kv "
                      "WHERE expires_at <= ? AND agent=?", (now_ms, agent)).fetchone()
        return Usage(keys - e[0], size - e[1])

    # -- writes -------------------------------------------------------------------------------
    def set(self, agent: str, key: str, value: Any, expected_version: int | None = None,
            ttl_seconds: float | None = None) -> Entry:
        """Write `value` under `key` (atomically checked against `expected_version` and the quota)."""
        check_key(key)
        text = encode_value(value, self.limits.max_value_bytes)
        size = len(key) + len(text.encode("utf-8"))
        now = self._now_ms()
        expires = ttl_expiry(now, ttl_seconds)
        with self._write() as c:
            self._expire(c, agent, now)
            r = c.execute("SELECT version, bytes FROM state_kv WHERE agent=? AND key=?", (agent, key)).fetchone()
            check_version(r[0] if r else None, expected_version, key)
            check_quota(self._usage(c, agent, now), r[1] if r else None, size, self.limits)
            version = self._tick(c, agent)
            if r is None:
                c.execute("INSERT INTO state_kv(agent, key, version, bytes, updated_at, expires_at, value) "
                          "VALUES (?,?,?,?,?,?,?)", (agent, key, version, size, now, expires, text))
            else:
                c.execute("UPDATE state_kv SET version=?, bytes=?, updated_at=?, expires_at=?, value=? "
                          "WHERE agent=? AND key=?", (version, size, now, expires, text, agent, key))
        return Entry(key, version, size, now, expires)

    def delete(self, agent: str, key: str, expected_version: int | None = None) -> int | None:
        """Remove `key`; the version it had (None when there was no live key)."""
        check_key(key)
        now = self._now_ms()
        with self._write() as c:
            self._expire(c, agent, now)
            r = c.execute("SELECT version FROM state_kv WHERE agent=? AND key=?", (agent, key)).fetchone()
            check_version(r[0] if r else None, expected_version, key)
            if r is not None:
                c.execute("DELETE FROM state_kv WHERE agent=? AND key=?", (agent, key))
        return r[0] if r else None

    @staticmethod
    def _tick(c: Any, agent: str) -> int:
        c.execute("INSERT INTO state_usage(agent, clock) VALUES (?, 1) "
                  "ON CONFLICT(agent) DO UPDATE SET clock = clock + 1", (agent,))
        return int(c.execute("SELECT clock FROM state_usage WHERE agent=?", (agent,)).fetchone()[0])

    def _expire(self, c: Any, agent: str, now_ms: int) -> None:
        """Cleanup inside a write's transaction (a failure rolls the write back; nothing is
        committed that the caller is told failed): this agent's expired keys, always; every
        agent's, a bounded batch, when the periodic sweep is due."""
        c.execute("DELETE FROM state_kv WHERE expires_at <= ? AND agent=?", (now_ms, agent))
        due = time.monotonic()
        if due >= self._next_sweep:
            self._next_sweep = due + SWEEP_EVERY
            self._sweep(c, now_ms, SWEEP_BATCH)

    @staticmethod
    def _sweep(c: Any, now_ms: int, limit: int) -> int:
        return int(c.execute("DELETE FROM state_kv WHERE rowid IN (SELECT rowid FROM state_kv "
                             "WHERE expires_at <= ? LIMIT ?)", (now_ms, limit)).rowcount)

    def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Delete up to `limit` expired keys of any agent; how many went."""
        with self._write() as c:
            return self._sweep(c, self._now_ms(), limit)
