"""Per-agent audit byte budget: bytes written per agent over a sliding window (pure; time passed in).

Why: every call, refused or not, costs the owner disk. An agent with no permissions at all could
otherwise fill the disk through its own refusals. The writer counts each record's bytes against the
agent that caused it; the pipeline asks `over()` before it runs a call and refuses with a
retry-after while the agent is over budget.

The window is kept as `BUCKETS` buckets per agent (constant memory per agent, O(1) per record);
retry-after is rounded up to the end of a bucket, so it is never too early.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BUCKETS = 10


@dataclass(slots=True)
class _Agent:
    buckets: deque[list[int]] = field(default_factory=deque)    # [bucket index, bytes], oldest first
    total: int = 0
    alerted_at: float | None = None


class ByteBudget:
    def __init__(self, limit: int, window: float):
        self.limit = int(limit)
        self.window = float(window)
        self.width = self.window / BUCKETS
        self._agents: dict[str, _Agent] = {}

    def _expire(self, a: _Agent, now: float) -> None:
        # Bucket b covers [b*w, (b+1)*w): it has left the window once now - window >= (b+1)*w.
        oldest_kept = int((now - self.window) // self.width)
        while a.buckets and a.buckets[0][0] < oldest_kept:
            a.total -= a.buckets.popleft()[1]

    def add(self, agent: str, n: int, now: float) -> bool:
        """Count `n` bytes for `agent`; True exactly when this crosses the budget for the first time
        in a window (the caller alerts the owner then, once)."""
        a = self._agents.get(agent)
        if a is None:
            a = self._agents[agent] = _Agent()
        b = int(now // self.width)
        last = a.buckets[-1] if a.buckets else None
        if last is not None and last[0] == b:
            # Still the newest bucket: nothing left the window since it was opened (the writer
            # calls this per record; the expiry runs once per bucket and agent instead).
            last[1] += n
        else:
            self._expire(a, now)
            a.buckets.append([b, n])
        a.total += n
        if a.total > self.limit and (a.alerted_at is None or now - a.alerted_at >= self.window):
            a.alerted_at = now
            return True
        return False

    def used(self, agent: str, now: float) -> int:
        a = self._agents.get(agent)
        if a is None:
            return 0
        self._expire(a, now)
        return a.total

    def over(self, agent: str, now: float) -> float | None:
        """Seconds until `agent` is back under budget, or None when it is under budget now."""
        a = self._agents.get(agent)
        if a is None:
            return None
        self._expire(a, now)
        if a.total <= self.limit:
            if not a.buckets:
                del self._agents[agent]        # forget idle agents: memory stays bounded
            return None
        left = a.total
        for b, n in a.buckets:
            left -= n
            if left <= self.limit:
                return max((b + 1) * self.width + self.window - now, 0.0) or self.width
        return self.window   # unreachable: dropping every bucket leaves 0 <= limit
