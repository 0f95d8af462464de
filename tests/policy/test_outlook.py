"""What a capability can be before its arguments are known (issue 18 "Permissions shown as blocked
when they are not"): `engine.outlook` is a range that contains every real verdict, and what
depends on arguments is said so, through agent.capabilities, the dashboard data and
`policy explain` without --args."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import Server, cli_json, run_cli
from tests.policy.policy_helpers import CTX, build, org, pf

from stockade.policy import analysis, loader
from stockade.policy import setup as policy_setup
from stockade.policy.engine import compile_policy, evaluate, outlook
from stockade.policy.model import TIERS

CAT = policy_setup.catalog()
ARG_DEPENDENT = ("filesystem.write", "filesystem.append", "filesystem.mkdir", "filesystem.move",
                 "filesystem.copy", "filesystem.delete", "filesystem.restore", "process.run")


def template(name: str) -> Any:
    return compile_policy(loader.load_system(CTX), pf(loader.template_text(name), "org"), {})


@pytest.mark.parametrize("name", loader.TEMPLATES)
def test_every_sampled_verdict_lies_in_the_range(name: str) -> None:
    pol = template(name)
    rules = analysis._all_rules(pol)
    for cap in CAT.names():
        o = outlook(pol, "a", cap, CAT.args.get(cap))
        seen = set()
        names = CAT.args.get(cap)
        for args in analysis._samples(rules, cap, CAT)[:-1]:       # the last sample is {} (not a call)
            if names is not None and not set(args) <= names:
                continue                                          # the schema refuses it before policy
            t = evaluate(pol, "a", cap, args).tier
            seen.add(t)
            assert o.lo <= t <= o.hi, (cap, args, TIERS[t], TIERS[o.lo], TIERS[o.hi])
        if not o.depends and seen:
            assert seen == {o.lo}, (cap, seen)


def test_writes_and_process_run_are_a_range_not_blocked() -> None:
    pol = template("personal")
    for cap in ARG_DEPENDENT:
        o = outlook(pol, "a", cap, CAT.args.get(cap))
        assert o.depends and TIERS[o.hi] == "blocked" and TIERS[o.lo] in ("notify", "approval_required"), cap
        assert any(r.layer == "system" for r in o.deciding), cap
    w = outlook(pol, "a", "filesystem.write", CAT.args["filesystem.write"])
    assert {r.label for r in w.deciding} >= {"sys-write-outside-workspace", "fs-large-write"}
    assert TIERS[evaluate(pol, "a", "filesystem.write", {"path": "/workspace/a", "content": "x"}).tier] == "notify"


def test_arguments_a_capability_does_not_take_do_not_make_it_depend() -> None:
    # The data-home rule reads path arguments: system.time has none, so it cannot fire there.
    o = outlook(template("personal"), "a", "system.time", CAT.args["system.time"])
    assert not o.depends and TIERS[o.lo] == "autonomous"
    # Unknown schema: any rule on arguments may apply, so it is shown as depending on them.
    assert outlook(template("personal"), "a", "system.time", None).depends


@settings(max_examples=60, deadline=None)
@given(lo_t=st.sampled_from(TIERS[:3]), hi_t=st.sampled_from(TIERS), size=st.integers(0, 50),
       n=st.integers(0, 60))
def test_range_bounds_every_call_for_generated_rules(lo_t: str, hi_t: str, size: int, n: int) -> None:
    pol = build(org({"capability": "filesystem.write", "tier": lo_t},
                    {"capability": "filesystem.write", "tier": hi_t, "when": {"content_size_gte": size}}))
    o = outlook(pol, "a", "filesystem.write", CAT.args["filesystem.write"])
    t = evaluate(pol, "a", "filesystem.write", {"path": "/workspace/f", "content": "x" * n}).tier
    assert o.lo <= t <= o.hi
    assert o.depends == (max(TIERS.index(hi_t), TIERS.index(lo_t)) > TIERS.index(lo_t)) or TIERS[o.hi] == "blocked"


# -- through the real gateway and CLI -------------------------------------------------------------
def test_agent_capabilities_lists_everything_callable(server: Server) -> None:
    key = server.agent("planner")
    listed = server.rpc(key, "capabilities.list").json()["result"]["capabilities"]
    caps = server.invoke(key, "agent.capabilities")["result"]["capabilities"]
    assert sorted(c["name"] for c in caps) == sorted(c["name"] for c in listed)
    by = {c["name"]: c for c in caps}
    for cap in ARG_DEPENDENT:
        e = by[cap]
        assert e["tier"] == "depends on arguments" and e["max_tier"] == "blocked", e
        assert e["min_tier"] in ("notify", "approval_required") and e["rules"], e
        assert all("file" not in r for r in e["rules"]), "the agent is not told where the owner's files are"
    assert by["system.time"]["tier"] == "autonomous" and not by["system.time"]["depends_on_arguments"]


def test_policy_explain_without_args_shows_the_range(home: Path) -> None:
    run_cli("agent", "create", "bob", home=home)
    d = cli_json("policy", "explain", "--agent", "bob", "--capability", "filesystem.write", home=home)
    assert d["tier"] == "depends on arguments"
    assert (d["outlook"]["min_tier"], d["outlook"]["max_tier"]) == ("notify", "blocked")
    assert "sys-write-outside-workspace" in {r["rule"] for r in d["outlook"]["rules"]}
    text = run_cli("policy", "explain", "--agent", "bob", "--capability", "filesystem.write", home=home).stdout
    assert "from notify to blocked" in text and "sys-write-outside-workspace" in text
    one = cli_json("policy", "explain", "--agent", "bob", "--capability", "filesystem.write",
                   "--args", '{"path": "/workspace/a", "content": "x"}', home=home)
    assert one["tier"] == "notify" and "outlook" not in one
