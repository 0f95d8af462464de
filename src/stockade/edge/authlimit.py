"""Failed authentication, per source address: throttled, counted, and reported once per window.

Pure (the caller passes the clock); the pipeline applies what it returns. Why each piece:

- **Throttle.** Each source has a bucket of `BURST` failures refilled at `PER_SECOND`. Once it is
  empty, the source's failures are refused as `RateLimited` (HTTP 429) with no record of their
  own. A valid key always passes: every local agent shares 127.0.0.1, so a throttle that refused
  before the key check would let one hostile process spraying bad keys lock out every agent not
  yet seen there (a new or just-rotated key). Nothing is given away by checking: keys are 256
  random bits, the check is one indexed lookup of their SHA-256, and a guess never succeeds.
- **Bounded record.** Per source and per `WINDOW_SECONDS`: the first failure is described
  (`first`), then everything is counted into one summary when the window ends (`summaries`).
  A description names the reason and the shape of what was presented, never the key: at most the
  `stk_` marker and a length.
- **Alert.** The first time a source's bucket empties in a window, `burst` carries what the
  owner is told (one critical event per source and window).

Sources are keyed by address (an IPv6 address by its /64, which one host usually holds whole);
at most `MAX_SOURCES` are tracked, the oldest dropped first (its summary is still returned).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

BURST = 10
PER_SECOND = 0.2
WINDOW_SECONDS = 60.0
MAX_SOURCES = 4096
KEY_MARKER = "stk_"


@functools.lru_cache(maxsize=1024)
def source_key(host: str | None) -> str:
    """The address a bucket belongs to: the IP as given, an IPv6 one by its /64. Pure, so
    remembered: every request asks, almost always for 127.0.0.1."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def presented(key: str | None) -> dict[str, Any]:
    """A non-secret description of a presented credential: the `stk_` marker or not, and a length."""
    if key is None:
        return {"credential": "none"}
    return {"credential": "stk_" if key.startswith(KEY_MARKER) else "other", "length": len(key)}


@dataclass
class _Source:
    tokens: float
    at: float
    window_start: float
    failures: int = 0
    throttled: int = 0
    alerted: bool = False
    first_written: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    transports: Counter[str] = field(default_factory=Counter)


@dataclass
class Outcome:
    """What to write after one failure: the window's first record, a burst alert, closed windows."""

    first: dict[str, Any] | None = None
    burst: dict[str, Any] | None = None
    summaries: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AuthFailures:
    burst: int = BURST
    per_second: float = PER_SECOND
    window: float = WINDOW_SECONDS
    max_sources: int = MAX_SOURCES
    _sources: OrderedDict[str, _Source] = field(default_factory=OrderedDict)

    # -- decisions ------------------------------------------------------------------------------
    def admits(self, source: str, now: float) -> float | None:
        """None when a failure from `source` is still counted; else seconds until the bucket refills."""
        s = self._sources.get(source)
        if s is None:
            return None
        self._refill(s, now)
        if s.tokens >= 1.0:
            return None
        return (1.0 - s.tokens) / self.per_second

    def succeeded(self, source: str, now: float) -> list[dict[str, Any]]:
        """A key authenticated from `source`: only closes windows that ended (nothing is remembered)."""
        return self._ensure(source, now) if source in self._sources else []

    # -- counting -------------------------------------------------------------------------------
    def failed(self, source: str, transport: str, reason: str, now: float,
               detail: dict[str, Any] | None = None) -> Outcome:
        out = Outcome(summaries=self._ensure(source, now))
        s = self._sources[source]
        self._refill(s, now)
        s.tokens = max(0.0, s.tokens - 1.0)
        s.failures += 1
        s.reasons[reason] += 1
        s.transports[transport] += 1
        if not s.first_written:
            s.first_written = True
            out.first = {"kind": "auth.failed", "source": source, "transport": transport, "reason": reason,
                         **(detail or {})}
        if s.tokens < 1.0 and not s.alerted:
            s.alerted = True
            out.burst = {"kind": "auth.burst", "source": source, "failures": s.failures,
                         "window_seconds": self.window, "retry_after": round((1.0 - s.tokens) / self.per_second, 3)}
        return out

    def throttled(self, source: str, transport: str, now: float) -> list[dict[str, Any]]:
        """Count a request refused by the throttle (no record of its own)."""
        out = self._ensure(source, now)
        s = self._sources[source]
        s.throttled += 1
        s.transports[transport] += 1
        return out

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summaries of every window that has ended. Sources stay until the oldest are dropped
        for new ones."""
        out: list[dict[str, Any]] = []
        for source, s in self._sources.items():
            if now - s.window_start < self.window:
                continue
            out.extend(self._close(source, s, now))
        return out

    def flush(self, now: float) -> list[dict[str, Any]]:
        """Every open window's summary (at shutdown)."""
        out: list[dict[str, Any]] = []
        for source, s in self._sources.items():
            out.extend(self._close(source, s, now))
        return out

    # -- internals ------------------------------------------------------------------------------
    def _ensure(self, source: str, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source(float(self.burst), now, now)
            while len(self._sources) > self.max_sources:
                old_source, old = self._sources.popitem(last=False)
                out.extend(self._close(old_source, old, now))
        elif now - s.window_start >= self.window:
            out.extend(self._close(source, s, now))
        self._sources.move_to_end(source)
        return out

    def _close(self, source: str, s: _Source, now: float) -> list[dict[str, Any]]:
        """End `s`'s window: its summary when it counted more than the first (already written) failure."""
        out: list[dict[str, Any]] = []
        if s.failures + s.throttled > (1 if s.first_written else 0):
            out.append({"kind": "auth.failures", "source": source, "seconds": round(now - s.window_start, 3),
                        "failures": s.failures, "throttled": s.throttled, "reasons": dict(s.reasons),
                        "transports": dict(s.transports)})
        s.window_start = now
        s.failures = s.throttled = 0
        s.alerted = s.first_written = False
        s.reasons.clear()
        s.transports.clear()
        return out

    def _refill(self, s: _Source, now: float) -> None:
        s.tokens = min(float(self.burst), s.tokens + max(0.0, now - s.at) * self.per_second)
        s.at = now
