"""The pipeline's policy hook: pure evaluation + the rate-limit stage + Decision shaping.

`decide` counts rate limits, `peek` does not, `visible` hides capabilities that are blocked for
the agent whatever the arguments. The compiled policy is swapped atomically on reload (one
attribute assignment), so a call sees either the old or the new policy, never a mix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stockade.core.types import Decision
from stockade.policy.engine import (
    Outlook,
    Policy,
    RateState,
    Verdict,
    always_blocked,
    escalate,
    evaluate,
    outlook,
    window_state,
)
from stockade.policy.model import BLOCKED, TIERS
from stockade.policy.ratelimit import RateLimiter


def rate_states(v: Verdict, agent: str, limiter: RateLimiter, now: float,
                count: bool = False) -> dict[str, RateState]:
    out: dict[str, RateState] = {}
    for _, lv in v.layers:
        for r in lv.rated:
            if r.key not in out:
                out[r.key] = window_state(r, limiter.window(agent, r), now, count)
    return out


def to_decision(policy: Policy, base: Verdict, v: Verdict, retry: float | None, exceeded: list[RateState],
                states: dict[str, RateState] | None = None) -> Decision:
    rule = v.rule
    reason = None
    if rule is not None:
        reason = rule.reason
    elif v.layer == "default":
        reason = f"no rule matched; the default tier is {TIERS[v.tier]}"
    # retry_after is reported when a rate limit changed the outcome; a block that stands on its
    # own (not from a rate limit) must not look like "retry later".
    retry_after = None
    if exceeded and v.tier > base.tier:
        retry_after = max(0.0, retry or 0.0)
        if v.tier == BLOCKED:
            reason = f"rate limit exceeded ({rule.label if rule else 'rule'}); retry after {retry_after:.1f}s"
    if rule is not None and any(s.rule is rule for s in exceeded) and v.tier > base.tier and v.tier != BLOCKED:
        reason = f"rate limit of {rule.label} exceeded: {TIERS[v.tier]} until the window frees up"
    layers: dict[str, Any] = {name: lv.describe() for name, lv in v.layers}
    layers["default"] = TIERS[v.default]
    layers["version"] = policy.version
    if states:
        layers["rate_limits"] = [{"rule": s.rule.label, "layer": s.rule.layer,
                                  **({"count": s.count} if s.count is not None else {}),
                                  "max": s.rule.rate_max, "window_s": s.rule.rate_window,
                                  "exceeded": s.exceeded,
                                  **({"retry_after": round(s.retry_after, 3)} if s.retry_after is not None else {})}
                                 for s in states.values()]
    return Decision(TIERS[v.tier], rule.label if rule else None, v.layer, reason,
                    rule.file if rule else None, rule.line if rule else None, retry_after, layers)


DEPENDS = "depends on arguments"


def describe_outlook(o: Outlook, owner: bool = False) -> dict[str, Any]:
    """An `engine.Outlook` as the owner and the agent read it: one tier when the arguments cannot
    change it; otherwise `tier` says so, with the range and each rule that decides within it.
    Only the owner's view names the rule's file and line (a path inside the data home)."""
    out: dict[str, Any] = {"tier": TIERS[o.lo] if not o.depends else DEPENDS, "min_tier": TIERS[o.lo],
                           "max_tier": TIERS[o.hi], "depends_on_arguments": o.depends}
    if o.depends:
        out["rules"] = [{"rule": r.label, "layer": r.layer, "tier": TIERS[r.tier], "when": r.when,
                         **({"reason": r.reason} if r.reason else {}),
                         **({"file": r.file, "line": r.line} if owner else {})}
                        for r in o.deciding]
    return out


class PolicyEngine:
    """Implements the pipeline's PolicyHook over a swappable compiled policy."""

    def __init__(self, policy: Policy, limiter: RateLimiter, clock: Callable[[], float] = time.time):
        self.policy = policy
        self.limiter = limiter
        self.clock = clock

    def _run(self, agent: str, capability: str, args: dict[str, Any], count: bool) -> Decision:
        policy = self.policy            # one read: a concurrent reload cannot mix two policies
        base = evaluate(policy, agent, capability, args)
        if not any(lv.rated for _, lv in base.layers):
            return to_decision(policy, base, base, None, [])
        now = self.clock()
        states = rate_states(base, agent, self.limiter, now, count=not count)   # peek/explain: exact counts
        v, retry, exceeded = escalate(base, states)
        if count and v.tier != BLOCKED:
            for _, lv in v.layers:
                for r in lv.rated:
                    self.limiter.hit(agent, r, now)
        return to_decision(policy, base, v, retry, exceeded, states)

    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return self._run(agent, capability, args, True)

    def peek(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return self._run(agent, capability, args, False)

    def visible(self, agent: str, capability: str) -> bool:
        return not always_blocked(self.policy, agent, capability)

    def outlook(self, agent: str, capability: str, argnames: frozenset[str] | None = None,
                owner: bool = False) -> dict[str, Any]:
        """What a capability can be for `agent` before its arguments are known (docs/policy.md
        "Before the arguments are known"): `describe_outlook` of the pure `engine.outlook`."""
        return describe_outlook(outlook(self.policy, agent, capability, argnames), owner)

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return self.policy.sandbox_profile(agent)

    def swap(self, policy: Policy) -> None:
        self.policy = policy
