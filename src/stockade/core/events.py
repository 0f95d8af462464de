"""In-process publish/subscribe for supervision events.

Producers (pipeline, policy reloads, audit health, approvals) call `publish`; consumers (SSE,
`stockade watch`, webhooks) `subscribe` and read an asyncio queue. A slow consumer loses its own
oldest events (counted in `dropped`), never blocks a producer: the audit log, not the bus, is the
record that must not lose anything.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass
class Event:
    kind: str                   # e.g. "call.notify", "call.denied", "approval.requested", "policy.reloaded"
    data: dict[str, Any]
    severity: str = "info"      # info | warning | critical
    id: int = field(default_factory=lambda: next(_ids))
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "severity": self.severity, "ts": self.ts, "data": self.data}


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int):
        self._bus = bus
        self._q: deque[Event] = deque(maxlen=maxsize)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.dropped = 0

    def _push(self, ev: Event) -> None:
        if len(self._q) == self._q.maxlen:
            self.dropped += 1
        self._q.append(ev)
        self._wake.set()

    async def get(self, timeout: float | None = None) -> Event | None:
        while not self._q:
            self._wake.clear()
            try:   # asyncio.timeout, not wait_for: no task created per wait (several subscribers per call)
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        return self._q.popleft()

    def close(self) -> None:
        self._bus._unsubscribe(self)


class EventBus:
    def __init__(self, history: int = 500):
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self.history: deque[Event] = deque(maxlen=history)

    def publish(self, kind: str, data: dict[str, Any], severity: str = "info") -> Event:
        """Thread-safe; callable from the event loop or from worker threads."""
        ev = Event(kind, data, severity)
        with self._lock:
            self.history.append(ev)
            subs = list(self._subs)
        for s in subs:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is s._loop:
                s._push(ev)
            else:
                s._loop.call_soon_threadsafe(s._push, ev)
        return ev

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
