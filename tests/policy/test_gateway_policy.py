"""The policy engine inside the real gateway (`stockade serve` subprocess, JSON-RPC over HTTP):
one call per tier, blocked capabilities hidden, rate-limit counters across a restart, hot reload
(good and refused), and the system layer with every policy file deleted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Server, cli_quick, quick_json, start_server

pytestmark = pytest.mark.xdist_group("policy-gateway")

ORG = """\
version: 1
default: approval_required
rules:
  - {id: t-auto, capability: system.time, tier: autonomous}
  - {id: t-notify, capability: system.info, tier: notify}
  - {id: t-approval, capability: agent.whoami, tier: approval_required}
  - {id: t-blocked, capability: system.health, tier: blocked, reason: health is private here}
  - {id: t-blocked-arg, capability: filesystem.write, tier: blocked, when: {path_glob: "*.secret"}, reason: no secrets}
  - id: t-rate
    capability: agent.capabilities
    tier: autonomous
    rate_limit: {max: 2, window: 1h, on_exceed: blocked}
"""


def write_org(home: Path, text: str) -> None:
    p = home / "policies" / "org.yaml"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(p)


def set_hold(home: Path) -> None:
    cfg = home / "stockade.yaml"
    text = cfg.read_text().replace("hold_seconds: 120", "hold_seconds: 0.2")
    cfg.write_text(text)


def error(resp: dict[str, Any]) -> dict[str, Any]:
    assert "error" in resp, resp
    return resp["error"]


def audit_records(home: Path, **filters: str) -> list[dict[str, Any]]:
    args = ["audit", "query"]
    for k, v in filters.items():
        args += [f"--{k}", v]
    out = cli_quick(*args, "--json", home=home).stdout   # the CLI is a means here: in this process
    data = json.loads(out) if out.strip().startswith(("{", "[")) and "\n" not in out.strip() else \
        [json.loads(line) for line in out.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("records", [])
    return data


@pytest.fixture
def policy_home(home: Path) -> Path:
    write_org(home, ORG)
    set_hold(home)
    return home


def test_each_tier_through_the_gateway(policy_home: Path) -> None:
    s = start_server(policy_home)
    try:
        key = s.agent("alice")
        # autonomous: runs
        r = s.invoke(key, "system.time")
        assert "result" in r and r["result"]["unix"] > 0, r
        # notify: runs, and the owner is told (audit record carries the tier and the rule)
        r = s.invoke(key, "system.info")
        assert "result" in r and r["result"]["product"] == "stockade", r
        # approval_required: held for the owner, then ApprovalPending
        e = error(s.invoke(key, "agent.whoami"))
        assert e["code"] == -32002 and e["data"]["type"] == "ApprovalPending", e
        # blocked whatever the arguments: hidden from the listing; naming it gets PolicyDenied
        names = {c["name"] for c in s.rpc(key, "capabilities.list").json()["result"]["capabilities"]}
        assert "system.health" not in names and {"system.time", "system.info", "agent.whoami"} <= names
        assert error(s.invoke(key, "system.health"))["data"]["type"] == "PolicyDenied"
        e = error(s.rpc(key, "capabilities.describe", {"name": "system.health"}).json())
        assert e["data"]["type"] == "PolicyDenied"
        # blocked for these arguments (org rule): PolicyDenied naming the rule; decided before the sandbox
        e = error(s.invoke(key, "filesystem.write", {"path": "keys/a.secret", "content": "x"}))
        assert e["code"] == -32001 and e["data"]["type"] == "PolicyDenied", e
        assert e["data"]["rule"] == "t-blocked-arg" and e["data"]["layer"] == "org" and "no secrets" in e["message"]
        # blocked by the system layer although org's default would only ask for approval
        e = error(s.invoke(key, "filesystem.write", {"path": "/workspace/../etc/passwd", "content": "x"}))
        assert e["data"]["type"] == "PolicyDenied" and e["data"]["layer"] == "system", e
        assert e["data"]["rule"] == "sys-write-outside-workspace"
        # rate limit: two calls, then RateLimited with retry_after
        for _ in range(2):
            assert "result" in s.invoke(key, "agent.capabilities")
        e = error(s.invoke(key, "agent.capabilities"))
        assert e["code"] == -32000 and e["data"]["type"] == "RateLimited", e
        assert 3500 < e["data"]["retry_after"] <= 3600
    finally:
        s.stop()
    recs = {r.get("capability"): r for r in audit_records(policy_home, agent="alice")}
    assert recs["system.info"]["decision"]["tier"] == "notify"
    assert recs["system.info"]["decision"]["rule"] == "t-notify"
    assert recs["system.time"]["decision"]["tier"] == "autonomous"
    assert recs["filesystem.write"]["decision"]["tier"] == "blocked"


def test_rate_limit_counters_survive_a_restart(policy_home: Path) -> None:
    s = start_server(policy_home)
    try:
        key = s.agent("bob")
        for _ in range(2):
            assert "result" in s.invoke(key, "agent.capabilities")
    finally:
        assert s.stop() == 0
    s = start_server(policy_home)
    try:
        e = error(s.invoke(key, "agent.capabilities"))
        assert e["data"]["type"] == "RateLimited", e
        # the offline explain reads the same counters
        ex = quick_json("policy", "explain", "--agent", "bob", "--capability", "agent.capabilities", home=policy_home)
        assert ex["tier"] == "blocked" and ex["rate_limits"][0]["count"] == 2 and ex["rate_limits"][0]["exceeded"]
        assert ex["retry_after"] > 3500
    finally:
        s.stop()


def _wait(pred: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_hot_reload_applies_good_files_and_refuses_bad_ones(policy_home: Path) -> None:
    base = ORG.replace("tier: blocked, reason: health is private here", "tier: autonomous")
    write_org(policy_home, base)
    s: Server = start_server(policy_home)
    try:
        key = s.agent("carol")
        assert "result" in s.invoke(key, "system.time")
        assert s.invoke(key, "system.health")["result"]["layers"]["policy"]["status"] == "ok"
        # a valid change: system.time becomes blocked within a couple of seconds
        write_org(policy_home, base.replace("{id: t-auto, capability: system.time, tier: autonomous}",
                                            "{id: t-auto, capability: system.time, tier: blocked}"))
        _wait(lambda: "error" in s.invoke(key, "system.time"))
        assert error(s.invoke(key, "system.time"))["data"]["type"] == "PolicyDenied"   # hidden now
        # an invalid file is refused with file:line: the last good policy stays in force
        bad = base.replace("{id: t-auto, capability: system.time, tier: autonomous}",
                           "{id: t-auto, capability: system.time, tier: sometimes}")
        write_org(policy_home, bad)
        health = _wait(lambda: _degraded(s, key))
        assert any("org.yaml:4:" in e and "tier" in e for e in health["errors"]), health
        assert error(s.invoke(key, "system.time"))["data"]["type"] == "PolicyDenied"   # still blocked
        assert "result" in s.invoke(key, "system.info")
        # fixed again: in force, healthy
        write_org(policy_home, base)
        _wait(lambda: "result" in s.invoke(key, "system.time"))
        assert s.invoke(key, "system.health")["result"]["layers"]["policy"]["status"] == "ok"
    finally:
        s.stop()
    kinds = [r.get("kind") for r in audit_records(policy_home, kind="policy.reloaded")]
    kinds += [r.get("kind") for r in audit_records(policy_home, kind="policy.rejected")]
    assert kinds.count("policy.reloaded") >= 2 and kinds.count("policy.rejected") >= 1, kinds


def _degraded(s: Server, key: str) -> dict[str, Any] | None:
    pol = s.invoke(key, "system.health")["result"]["layers"]["policy"]
    return pol if pol["status"] == "degraded" else None


def test_system_layer_holds_with_every_policy_file_deleted(home: Path) -> None:
    (home / "policies" / "org.yaml").unlink()
    s = start_server(home)
    try:
        key = s.agent("dave")
        # no org file: default approval_required for ordinary capabilities ...
        names = {c["name"] for c in s.rpc(key, "capabilities.list").json()["result"]["capabilities"]}
        assert "system.time" in names
        # ... and the built-in blocks, even for capabilities a part has not registered yet
        ex = quick_json("policy", "explain", "--agent", "dave", "--capability", "filesystem.write",
                      "--args", json.dumps({"path": "/etc/passwd", "content": "x"}), home=home)
        assert ex["tier"] == "blocked" and ex["layer"] == "system"
        ex = quick_json("policy", "explain", "--agent", "dave", "--capability", "process.run",
                      "--args", json.dumps({"argv": ["rm", "-rf", "/"]}), home=home)
        assert ex["tier"] == "blocked" and ex["rule"] == "sys-rm-root"
        if any(n.startswith("filesystem.write") for n in names):
            e = error(s.invoke(key, "filesystem.write", {"path": "/etc/passwd", "content": "x"}))
            assert e["data"]["type"] == "PolicyDenied" and e["data"]["layer"] == "system"
        if "process.run" in names:
            e = error(s.invoke(key, "process.run", {"argv": ["rm", "-rf", "/"]}))
            assert e["data"]["type"] == "PolicyDenied" and e["data"]["rule"] == "sys-rm-root"
    finally:
        s.stop()
