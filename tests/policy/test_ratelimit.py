"""Rate limits: sliding windows per (agent, rule), escalation only upwards, retry_after, real SQLite
persistence (a new limiter on the same database sees the old hits)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.policy.policy_helpers import build, org

from stockade.core import db as dbmod
from stockade.policy.ratelimit import RateLimiter
from stockade.policy.runtime import PolicyEngine

R = dict


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(policy, db: Path | None = None, clock: Clock | None = None) -> PolicyEngine:  # type: ignore[no-untyped-def]
    conn = dbmod.connect(db) if db else None
    return PolicyEngine(policy, RateLimiter(conn, now=(clock or Clock())()), clock or Clock())


POLICY = org(R(id="net", capability="network.http_request", tier="notify",
               rate_limit={"max": 3, "window": "60s", "on_exceed": "blocked"}),
             R(id="dns", capability="network.dns_lookup", tier="autonomous",
               rate_limit={"max": 2, "window": "10s", "on_exceed": "approval_required"}),
             default="autonomous")
URL = {"method": "GET", "url": "https://example.com/"}


def test_window_escalates_then_frees_up() -> None:
    clock = Clock()
    e = engine(build(POLICY), clock=clock)
    for i in range(3):
        d = e.decide("a", "network.http_request", URL)
        assert d.tier == "notify" and d.retry_after is None, i
        clock.t += 1
    d = e.decide("a", "network.http_request", URL)
    assert d.tier == "blocked" and d.rule == "net" and d.layer == "org"
    assert d.retry_after == pytest.approx(57.0)          # first hit at t0, window 60 s, now t0+3
    assert "rate limit" in d.reason
    # blocked calls do not count, so the window frees up on time
    clock.t += 57.01
    assert e.decide("a", "network.http_request", URL).tier == "notify"
    # peek never counts
    clock.t += 100
    for _ in range(10):
        assert e.peek("a", "network.http_request", URL).tier == "notify"
    assert e.decide("a", "network.http_request", URL).tier == "notify"


def test_counters_are_per_agent_and_per_rule() -> None:
    clock = Clock()
    e = engine(build(POLICY), clock=clock)
    for _ in range(3):
        e.decide("a", "network.http_request", URL)
    assert e.decide("a", "network.http_request", URL).tier == "blocked"
    assert e.decide("b", "network.http_request", URL).tier == "notify"
    assert e.decide("a", "network.dns_lookup", {"name": "x"}).tier == "autonomous"


def test_escalation_to_a_lower_bound_keeps_retry_after_and_never_lowers() -> None:
    clock = Clock()
    e = engine(build(POLICY), clock=clock)
    e.decide("a", "network.dns_lookup", {"name": "x"})
    e.decide("a", "network.dns_lookup", {"name": "x"})
    d = e.decide("a", "network.dns_lookup", {"name": "x"})
    assert d.tier == "approval_required" and d.retry_after == pytest.approx(10.0)
    # a higher layer's block is never turned into "retry later"
    p = build(org(R(id="rl", capability="filesystem.write", tier="notify",
                    rate_limit={"max": 1, "window": "1h"})))
    e = engine(p, clock=clock)
    args = {"path": "/etc/x", "content": "x"}
    for _ in range(3):
        d = e.decide("a", "filesystem.write", args)
        assert d.tier == "blocked" and d.retry_after is None and d.layer == "system"


def test_rate_state_is_explained() -> None:
    clock = Clock()
    e = engine(build(POLICY), clock=clock)
    e.decide("a", "network.http_request", URL)
    d = e.peek("a", "network.http_request", URL)
    (rl,) = d.layers["rate_limits"]
    assert rl == {"rule": "net", "layer": "org", "count": 1, "max": 3, "window_s": 60.0, "exceeded": False}


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "stockade.db"
    clock = Clock()
    e = engine(build(POLICY), db, clock)
    for _ in range(3):
        e.decide("a", "network.http_request", URL)
    e.limiter.close()
    # a new process: new limiter, new compiled policy from the same text, same database
    e2 = engine(build(POLICY), db, clock)
    d = e2.decide("a", "network.http_request", URL)
    assert d.tier == "blocked" and d.retry_after == pytest.approx(60.0)
    clock.t += 61
    assert e2.decide("a", "network.http_request", URL).tier == "notify"
    e2.limiter.close()


def test_pruning_keeps_only_what_windows_need(tmp_path: Path) -> None:
    db = tmp_path / "stockade.db"
    clock = Clock()
    e = engine(build(POLICY), db, clock)
    for _ in range(50):
        e.decide("a", "network.dns_lookup", {"name": "x"})
        clock.t += 20
    e.limiter.prune(clock.t)
    n = e.limiter.conn.execute("SELECT COUNT(*) FROM policy_rate_hits").fetchone()[0]
    assert n <= 2
    e.limiter.close()


def test_changed_max_on_reload_keeps_history() -> None:
    clock = Clock()
    e = engine(build(POLICY), clock=clock)
    for _ in range(3):
        e.decide("a", "network.http_request", URL)
    bigger = org(R(id="net", capability="network.http_request", tier="notify",
                   rate_limit={"max": 4, "window": "60s"}), default="autonomous")
    e.swap(build(bigger))
    assert e.decide("a", "network.http_request", URL).tier == "notify"
    assert e.decide("a", "network.http_request", URL).tier == "blocked"
