"""What refused and failed calls cost the agent that makes them (pure; the pipeline applies it).

A call that fails validation, names no capability or is denied by policy does almost no work,
yet it used to write its whole arguments to the audit log: an agent with no permissions could
fill the disk. Two bounds close that:

- `FailureLimiter`: each agent has a bucket of failures; an agent that empties it is refused
  every call (`RateLimited`, no validation, no policy, no execution) for a cooldown. While it is
  cooling down, the first refusal is audited and the rest are counted into one summary record.
- `refused_args`: a refused call's record keeps a digest and a bounded prefix of its arguments,
  never the whole of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from stockade.core.encoding import canonical_json
from stockade.core.limits import (
    FAILURE_BURST,
    FAILURE_COOLDOWN_SECONDS,
    FAILURE_PER_SECOND,
    REFUSED_ARGS_PREFIX_BYTES,
)


@dataclass
class _Bucket:
    tokens: float
    at: float
    cooldown_until: float = 0.0
    suppressed: int = 0        # refusals during the cooldown not written one by one


@dataclass
class FailureLimiter:
    """Per-agent failure budget with a cooldown. Pure: the caller passes the clock."""

    burst: int = FAILURE_BURST
    per_second: float = FAILURE_PER_SECOND
    cooldown: float = FAILURE_COOLDOWN_SECONDS
    _agents: dict[str, _Bucket] = field(default_factory=dict)

    def blocked(self, agent: str, now: float) -> float | None:
        """Seconds left in the agent's cooldown, or None when it may call."""
        b = self._agents.get(agent)
        if b is None or now >= b.cooldown_until:
            return None
        return b.cooldown_until - now

    def failed(self, agent: str, now: float) -> bool:
        """Count one failure; True when it emptied the bucket (the cooldown starts now)."""
        b = self._agents.get(agent)
        if b is None:
            b = self._agents[agent] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.per_second)
        b.at = now
        b.tokens -= 1.0
        if b.tokens >= 0:
            return False
        b.tokens = 0.0
        b.cooldown_until = now + self.cooldown
        return True

    def suppress(self, agent: str) -> bool:
        """A refusal during the cooldown: True for the first one (write it), False to count it."""
        b = self._agents.setdefault(agent, _Bucket(0.0, 0.0))
        b.suppressed += 1
        return b.suppressed == 1

    def take_suppressed(self, agent: str) -> int:
        """How many refusals were counted without a record of their own (beyond the first)."""
        b = self._agents.get(agent)
        if b is None or b.suppressed <= 1:
            if b is not None:
                b.suppressed = 0
            return 0
        n, b.suppressed = b.suppressed - 1, 0
        return n


def encode_args(args: Any) -> bytes:
    """Canonical bytes of arguments for a digest; never raises (odd values become their repr)."""
    try:
        text = canonical_json(args, allow_nan=True, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = f"<unencodable {type(args).__name__}>"
    return text.encode("utf-8", "backslashreplace")


def refused_args(raw: bytes, limit: int = REFUSED_ARGS_PREFIX_BYTES) -> dict[str, Any]:
    """What the audit log keeps of a refused call's arguments: digest, size and a prefix."""
    out: dict[str, Any] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                           "prefix": raw[:limit].decode("utf-8", "ignore")}
    if len(raw) > limit:
        out["truncated"] = True
    return out
