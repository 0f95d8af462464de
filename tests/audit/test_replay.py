"""`stockade audit replay`: recorded decisions decided again with a candidate policy (issue 21)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tests.audit.helpers import StepClock, day_us
from tests.conftest import run_cli, start_server

from stockade.audit import replay as rp
from stockade.audit.writer import AuditWriter, Settings
from stockade.cli.replay_policy import PolicyDecider, load_candidate
from stockade.core.home import Home

pytestmark = pytest.mark.xdist_group("audit-cli")

ORG = """version: 1
default: approval_required
rules:
  - {id: time, capability: system.time, tier: autonomous}
  - {id: no-info, capability: system.info, tier: blocked}
  - {id: no-writes, capability: filesystem.write, tier: blocked}
"""


def _policy_dir(root: Path, org: str, agents: dict[str, str] | None = None) -> Path:
    d = root
    (d / "agents").mkdir(parents=True, exist_ok=True)
    (d / "org.yaml").write_text(org)
    for name, text in (agents or {}).items():
        (d / "agents" / f"{name}.yaml").write_text(text)
    return d


def _replay(home: Path, policy: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    p = run_cli("audit", "replay", "--policy", str(policy), "--json", *extra, home=home, check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def test_replay_against_real_history(home: Path, tmp_path: Path) -> None:
    (home / "policies" / "org.yaml").write_text(ORG)
    server = start_server(home)
    try:
        key = server.agent("alice")
        for _ in range(3):
            assert "result" in server.invoke(key, "system.time")
        assert server.invoke(key, "system.info")["error"]                       # blocked: args kept as digest
        big = server.invoke(key, "filesystem.write", {"path": "/workspace/x", "content": "y" * 10_000})
        assert big["error"]                                                     # blocked, args past the prefix
        assert server.invoke(key, "system.time", {"bogus": 1})["error"]         # refused before policy
    finally:
        assert server.stop() == 0

    # The same policy: nothing changes, exit 0; the truncated refusal is named, not guessed.
    code, same = _replay(home, _policy_dir(tmp_path / "same", ORG))
    assert code == 0
    assert (same["decisions"], same["replayed"], same["unchanged"]) == (5, 4, 4)
    assert same["loosened"] == same["tightened"] == 0
    assert same["undecidable"] == 1 and same["not_decided"] == 1
    assert list(same["undecidable_reasons"]) == ["refused call: arguments kept only as a digest and a prefix"]
    assert same["examples"]["undecidable"][0]["capability"] == "filesystem.write"

    # Loosen system.info, tighten system.time: exit 1, each call with the rule then and now.
    cand = ORG.replace("{id: time, capability: system.time, tier: autonomous}",
                       "{id: time-review, capability: system.time, tier: approval_required}") \
              .replace("{id: no-info, capability: system.info, tier: blocked}",
                       "{id: info-ok, capability: system.info, tier: notify}")
    code, out = _replay(home, _policy_dir(tmp_path / "cand", cand))
    assert code == 1
    assert (out["loosened"], out["tightened"], out["unchanged"]) == (1, 3, 0)
    loose = out["examples"]["loosened"][0]
    assert loose["capability"] == "system.info" and loose["agent"] == "alice"
    assert loose["then"]["tier"] == "blocked" and loose["then"]["rule"] == "no-info" and loose["then"]["policy"]
    assert loose["now"] == {"tier": "notify", "rule": "info-ok", "layer": "org"}
    assert {e["now"]["rule"] for e in out["examples"]["tightened"]} == {"time-review"}
    assert out["changes"]["tightened"] == [{"capability": "system.time", "then": "autonomous",
                                            "now": "approval_required", "calls": 3}]
    human = run_cli("audit", "replay", "--policy", str(tmp_path / "cand"), home=home, check=False)
    assert human.returncode == 1 and "LOOSENED" in human.stdout and "no-info" in human.stdout
    assert "cannot be re-decided" in human.stdout

    # Only tightening: exit 0 (a CI gate lets it through).
    code, out = _replay(home, _policy_dir(tmp_path / "tight", ORG.replace("tier: autonomous", "tier: notify")))
    assert code == 0 and out["tightened"] == 3 and out["loosened"] == 0
    # --agent filters: nobody else called
    code, out = _replay(home, tmp_path / "cand", "--agent", "bob")
    assert code == 0 and out["decisions"] == 0


def test_bad_policy_dir_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    bad = _policy_dir(tmp_path / "bad", "version: 1\nrules:\n  - {capability: system.time, tier: sometimes}\n")
    p = run_cli("audit", "replay", "--policy", str(bad), home=home, check=False)
    assert p.returncode == 2 and "does not load" in p.stderr and "org.yaml" in p.stderr
    p = run_cli("audit", "replay", "--policy", str(tmp_path / "missing"), "--json", home=home, check=False)
    assert p.returncode == 2 and json.loads(p.stdout)["error"]["type"] == "ConfigError"
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli("audit", "replay", "--policy", str(empty), home=home, check=False)
    assert p.returncode == 2 and "no policy here" in p.stderr


def _rec(i: int, cap: str = "system.time", tier: str = "autonomous", rule: str | None = "time",
         args: Any = None, **extra: Any) -> dict[str, Any]:
    return {"agent": "alice", "session": "s1", "capability": cap, "call": f"{i:032x}", "phase": "complete",
            "args": {} if args is None else args, "decision": {"tier": tier, "rule": rule, "layer": "org"},
            "outcome": {"status": "ok"}, "duration_us": 100, **extra}


def _write(audit_dir: Path, recs: list[tuple[float, dict[str, Any]]]) -> None:
    """Records at the given seconds after 2026-01-01T01:00Z, written by the real writer."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    clock = StepClock(day_us("2026-01-01", 3600))

    async def go() -> None:
        w = AuditWriter(audit_dir, None, Settings(retention_days=100_000), clock=clock)
        await w.open()
        for at, r in recs:
            clock.now = day_us("2026-01-01", 3600 + at)
            await w.record(r)
        await w.close()

    asyncio.run(go())


RATED = ORG.replace("{id: time, capability: system.time, tier: autonomous}",
                    "{id: time, capability: system.time, tier: autonomous, "
                    "rate_limit: {max: 2, window: 1h, on_exceed: blocked}}")


def test_rate_limits_are_simulated_from_recorded_times(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    policy = load_candidate(_policy_dir(tmp_path / "p", RATED), home)
    # Five calls within a minute: the third and later exceed "2 per hour" -> blocked (tightened).
    _write(tmp_path / "a", [(i * 10.0, _rec(i)) for i in range(5)])
    t = rp.run(tmp_path / "a", lambda: PolicyDecider(policy))
    out = rp.report(t)
    assert (out["unchanged"], out["tightened"]) == (2, 3)
    assert [e["seq"] for e in out["examples"]["tightened"]] == [3, 4, 5]
    assert out["examples"]["tightened"][0]["now"]["rule"] == "time"
    # The same five calls two hours apart: never more than one per window -> nothing changes.
    _write(tmp_path / "b", [(i * 7200.0, _rec(i)) for i in range(5)])
    out = rp.report(rp.run(tmp_path / "b", lambda: PolicyDecider(policy)))
    assert (out["unchanged"], out["tightened"]) == (5, 0)


def test_parallel_chunks_give_the_same_answer(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    policy = load_candidate(_policy_dir(tmp_path / "p", RATED.replace("no-info, capability: system.info, tier: "
                                                                      "blocked", "info, capability: system.info, "
                                                                      "tier: autonomous")), home)
    recs = []
    for i in range(400):
        cap = "system.info" if i % 3 else "system.time"
        recs.append((i * 30.0, _rec(i, cap, "blocked" if cap == "system.info" else "autonomous", "r")))
    _write(tmp_path / "a", recs)
    one = rp.report(rp.run(tmp_path / "a", lambda: PolicyDecider(policy), workers=1))
    two = rp.report(rp.run(tmp_path / "a", lambda: PolicyDecider(policy), workers=2, chunk_bytes=2000))
    assert len(rp.chunks([next((tmp_path / "a").glob("*.log"))], 2000)) > 4
    assert one == two
    assert one["loosened"] == 266 and one["tightened"] > 0 and one["decisions"] == 400


def test_arguments_are_recovered_exactly_or_not_at_all() -> None:
    import hashlib

    def refused(text: str, **kw: Any) -> dict[str, Any]:
        raw = text.encode()
        args = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw), "prefix": text, **kw}
        return _rec(1, tier="blocked", args=args, outcome={"status": "error", "error": "PolicyDenied"})

    assert rp.recover_args(refused('{"path":"/x"}')) == ({"path": "/x"}, None)
    forged = refused('{"path":"/x"}')
    forged["args"]["prefix"] = '{"path":"/y"}'                       # prefix does not match the digest
    assert rp.recover_args(forged)[0] is None
    assert rp.recover_args(refused('{"path":"/x', truncated=True))[0] is None
    # The same shape on an allowed call is the agent's real arguments, taken as they are.
    real = _rec(1, args={"sha256": "00", "bytes": 1, "prefix": "p"})
    assert rp.recover_args(real) == (real["args"], None)
    stand = _rec(1, args={"_unrecorded": "arguments too deep to record", "sha256": "ab", "bytes": 9, "prefix": "[["})
    args, why = rp.recover_args(stand)
    assert args is None and why is not None and "too deep" in why
    assert rp.recover_args(_rec(1, args={"_truncated": True, "bytes": 1 << 20, "sha256": "ab"}))[0] is None
    # not decisions: events, outcome halves, calls refused before policy
    assert rp.decision_of({"kind": "agent.created", "ts": 1}) is None
    assert rp.decision_of({**_rec(1), "phase": "outcome", "ts": 1}) is None
    assert rp.decision_of({**_rec(1, tier=None), "ts": 1}) == "not_decided"  # type: ignore[arg-type]


def test_pack_floor_holds_a_loosening(tmp_path: Path) -> None:
    """A pack's declared tier is a floor over the policy: a candidate below it loosens nothing."""
    t = rp.Tally()
    c = rp.Call(1, 1, "alice", "acme.deploy", None, {}, None, ("approval_required", "pack:acme", "pack"), None, 0)
    t.floors["acme.deploy"] = ("approval_required", "pack:acme")
    t.add(c, ("autonomous", "open", "org"))
    rp._apply_floors(t)
    assert not t.changes and t.unchanged == 1 and not t.examples["loosened"]


RATED_MIX = """version: 1
default: approval_required
rules:
  - {id: net, capability: "network.*", tier: notify, rate_limit: {max: 3, window: 1m, on_exceed: blocked}}
  - {id: fs, capability: "filesystem.*", tier: autonomous, rate_limit: {max: 5, window: 10s}}
  - {id: big, capability: filesystem.write, tier: approval_required, when: {content_size_gte: 100}}
"""


def test_decider_in_order_is_the_gateways_rate_stage(tmp_path: Path) -> None:
    """The replay decider decides rate-limited calls as `PolicyEngine.decide` does at the same times."""
    import random

    from stockade.policy.ratelimit import RateLimiter
    from stockade.policy.runtime import PolicyEngine

    policy = load_candidate(_policy_dir(tmp_path / "p", RATED_MIX), Home(tmp_path))
    now = [0.0]
    engine = PolicyEngine(policy, RateLimiter(None), clock=lambda: now[0])
    decider = PolicyDecider(policy)
    rng = random.Random(5)
    at, changed = 1000.0, set()
    for _ in range(600):
        at += rng.choice([0.1, 0.5, 2.0, 20.0])
        agent = rng.choice(["alice", "bob"])
        cap = rng.choice(["network.http_request", "filesystem.write", "filesystem.read", "system.time"])
        args = {"path": "/workspace/x", "content": "y" * rng.choice([1, 500])}
        now[0] = at
        d = engine.decide(agent, cap, args)
        got = decider.in_order(agent, cap, args, at)
        assert got == (d.tier, d.rule, d.layer), (agent, cap, at)
        changed.add(got[0])
    assert {"blocked", "approval_required", "notify", "autonomous"} <= changed    # the limits did bite


def test_the_shortcut_for_common_records_changes_no_count(tmp_path: Path) -> None:
    """Unfiltered replay counts unchanged calls without building a Call; a filter that keeps every
    record takes the full path for each. Both must give the same report, whatever the mix."""
    policy = load_candidate(_policy_dir(tmp_path / "p", RATED_MIX), Home(tmp_path))
    recs = []
    for i in range(120):
        cap = ["filesystem.write", "filesystem.read", "network.fetch", "system.time", "acme.deploy"][i % 5]
        tier = ["autonomous", "approval_required", "notify"][i % 3]
        layer = "pack" if cap == "acme.deploy" else "org"
        args: Any = {"path": "/workspace/x", "content": "y" * (i % 200)}
        if i % 11 == 0:
            args = {"sha256": "00", "bytes": 3, "prefix": "{}", "_unrecorded": "too deep"}
        r = _rec(i, cap, tier, "pack:acme" if layer == "pack" else "r", args)
        r["decision"]["layer"] = layer
        if i % 13 == 0:
            del r["decision"]["tier"]                   # refused before policy
        recs.append((i * 5.0, r))
    _write(tmp_path / "a", recs)
    fast = rp.report(rp.run(tmp_path / "a", lambda: PolicyDecider(policy), workers=1))
    full = rp.report(rp.run(tmp_path / "a", lambda: PolicyDecider(policy), rp.Filters(since_us=0), workers=1))
    assert fast == full
    assert fast["unchanged"] and fast["tightened"] and fast["loosened"] and fast["undecidable"] and fast["not_decided"]
