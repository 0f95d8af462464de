"""`engine.decision_table` / `depends_on_args`: one (agent, capability) decided many times (audit
replay). The table must give exactly `evaluate`'s verdict for every call, and must never call a
verdict argument-free when a condition looks at the arguments."""

from __future__ import annotations

import random
from typing import Any

from tests.policy.policy_helpers import build, org

from stockade.policy.engine import decision_table, depends_on_args, evaluate

R = dict  # a rule

RULES = org(
    R(id="ws-read", capability="filesystem.read", tier="autonomous", when={"path_under": "/workspace"}),
    R(id="fs", capability="filesystem.*", tier="notify"),
    R(id="big", capability="filesystem.write", tier="approval_required", when={"content_size_gte": 100}),
    R(id="tmp", capability="filesystem.write", tier="autonomous", when={"path_under": "/workspace/tmp"}),
    R(id="ls", capability="process.run", tier="autonomous", when={"argv_match": "^ls( |$)"}),
    R(id="proc", capability="process.run", tier="approval_required"),
    R(id="prod", capability="deploy.run", tier="blocked", when={"arg_equals": {"env": "prod"}}),
    R(id="small", capability="deploy.run", tier="notify", when={"arg_lt": {"/amount": 10}}),
    R(id="net", capability="network.*", tier="notify", rate_limit={"max": 3, "window": "1m"}),
    R(id="time", capability="system.time", tier="autonomous"),
    R(id="named", capability="acme.*", tier="notify", when={"name_match": "^acme\\.safe_"}),
    default="approval_required",
)
AGENTS = {"bob": org(R(id="bob-ls", capability="process.run", tier="blocked", when={"argv_match": "rm"}))}


def _args(rng: random.Random) -> dict[str, Any]:
    pick = rng.choice
    a: dict[str, Any] = {}
    for name, values in (("path", ["/workspace/a", "/workspace/tmp/x", "/etc/passwd", "rel/x", "", 5, None,
                                   "/workspace/../etc", "{home}/audit"]),
                         ("content", ["x", "y" * 200, 7, None]),
                         ("argv", [["ls", "-l"], ["rm", "-rf", "/"], "ls", [], ["ls"], [1]]),
                         ("env", ["prod", "dev", {"LD_PRELOAD": "/x"}, None]),
                         ("amount", [1, 50, "3", True, 1e400 if rng.random() < 0.1 else 9.5]),
                         ("url", ["https://example.org/x", "http://10.0.0.1/", 3])):
        if rng.random() < 0.6:
            a[name] = pick(values)
    return a


def test_table_gives_exactly_evaluates_verdict() -> None:
    p = build(RULES, agents=AGENTS)
    rng = random.Random(21)
    caps = ["filesystem.read", "filesystem.write", "filesystem.list", "process.run", "deploy.run",
            "network.http_request", "system.time", "acme.safe_x", "acme.other", "vault.get", "zz.unknown"]
    for _ in range(4000):
        agent, cap, args = rng.choice(["alice", "bob"]), rng.choice(caps), _args(rng)
        assert decision_table(p, agent, cap).verdict(args) == evaluate(p, agent, cap, args), (agent, cap, args)


def test_depends_on_args() -> None:
    p = build(RULES, agents=AGENTS, system=None)
    assert not depends_on_args(p, "alice", "system.time")        # unconditional rule only
    assert not depends_on_args(p, "alice", "acme.safe_x")        # a condition on the name only
    assert not depends_on_args(p, "alice", "zz.unknown")         # the default
    assert depends_on_args(p, "alice", "filesystem.read")
    assert depends_on_args(p, "bob", "process.run")
    # the shipped system layer looks at paths and callers of every capability
    assert depends_on_args(build(RULES, agents=AGENTS), "alice", "system.time")
    t = decision_table(p, "alice", "system.time")
    assert t.fixed is not None and t.verdict({"anything": 1}) == evaluate(p, "alice", "system.time", {"x": 2})


def test_a_condition_that_swallows_the_probe_still_reads_the_arguments() -> None:
    p = build(org(R(id="c", capability="a.x", tier="autonomous", when={"path_under": "/workspace"}),
                  R(id="d", capability="a.*", tier="blocked")), system=None)

    def sneaky(agent: str, cap: str, args: dict[str, Any]) -> bool:
        try:
            return args["path"] == "/ok"
        except Exception:  # noqa: BLE001 - what a careless condition could do
            return False

    rule = p.org.file.rules[0] if p.org is not None else None
    assert rule is not None
    object.__setattr__(rule, "cond", sneaky)          # Rule is frozen; the index holds this object
    assert depends_on_args(p, "a", "a.x")
    t = decision_table(p, "a", "a.x")
    assert t.verdict({"path": "/ok"}).rule is rule and t.verdict({"path": "/no"}).rule is not rule
