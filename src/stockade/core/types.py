"""Shared terms of the call path: who calls (`Caller`), what policy decided (`Decision`), tiers.

Every part that takes part in a call speaks these; none of them defines its own copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args


class Tier(StrEnum):
    """How a call is handled, in order of strictness (a `StrEnum`: equal to its text)."""

    AUTONOMOUS = "autonomous"
    NOTIFY = "notify"
    APPROVAL_REQUIRED = "approval_required"
    BLOCKED = "blocked"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def strictest(cls, *tiers: str) -> Tier:
        return max((cls(t) for t in tiers), key=lambda t: t.rank)


# A capability's name: `<family>.<action>` in lower case (`filesystem.read`, `exchange.get_balance`).
# The one pattern the registry, pack manifests and policies check names against.
CAPABILITY_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"

TIERS: tuple[str, ...] = tuple(t.value for t in Tier)
# The same names as a type, for the models that validate owner files (policy, definitions, packs).
TierName = Literal["autonomous", "notify", "approval_required", "blocked"]
assert get_args(TierName) == TIERS  # noqa: S101  (one list of tiers: the type follows the enum)
_RANK = {t: i for i, t in enumerate(Tier)}
TIER_ORDER: dict[str, int] = {t.value: i for i, t in enumerate(Tier)}


def tier_rank(tier: str) -> int:
    """Rank of a tier given as text; an unknown tier ranks as `blocked` (fail closed)."""
    return TIER_ORDER.get(tier, TIER_ORDER["blocked"])


@dataclass(frozen=True)
class Caller:
    """Who is calling, as established by the transport (re-checked on every call)."""

    agent: str
    key_hash: bytes
    session: str
    transport: str


@dataclass
class Decision:
    """What policy decided for one call, and which rule decided it."""

    tier: str
    rule: str | None = None          # rule id (or file:line when it has no id)
    layer: str | None = None         # system | org | agent | default | pack
    reason: str | None = None
    file: str | None = None
    line: int | None = None
    retry_after: float | None = None  # set when a rate limit escalated the tier
    layers: dict[str, Any] = field(default_factory=dict)

    def audit(self) -> dict[str, Any]:
        out = {"tier": self.tier, "rule": self.rule, "layer": self.layer}
        if self.layers.get("version"):
            out["policy"] = self.layers["version"]   # which compiled policy decided: replayable offline
        return out


# Set by a transport that can tell the client a call is still alive (MCP progress notifications);
# long waits (an approval being held) call `await report_progress(done, total, message)`.
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
progress_reporter: ContextVar[ProgressFn | None] = ContextVar("stockade_progress", default=None)


async def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    """Best effort: never let a client that went away break the call."""
    fn = progress_reporter.get()
    if fn is not None:
        with contextlib.suppress(Exception):
            await fn(progress, total, message)
