"""Crash leftovers (issue 17): after a SIGKILL of `stockade serve`, the next start of the same
home reclaims that home's namespaces, veths, host nftables table and cgroups, and touches no
other home's (stockade.sandbox.leftovers).

The planner is unit-tested on names; the end-to-end test runs two real gateways (homes A and B,
same agent name, one shared cgroup parent), kills A, and checks the restart of A against the
real kernel objects of both."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import Server, cli_quick, need_root, quick_json, start_server

from stockade.core.home import Home
from stockade.egress import netns, nft, ruleset
from stockade.egress.manager import alias, veth_name
from stockade.sandbox import cgroups
from stockade.sandbox.leftovers import Found, Link, hierarchy_roots, plan

A, B = "a1b2c3", "a1b2c4"
MARK = "10.254.254.254/32"


# -- the planner ------------------------------------------------------------------------------------
def test_plan_takes_exactly_this_homes_namespaces() -> None:
    names = (f"stockade-{A}-alice", f"stockade-{A}-alice.exchange", f"stockade-{B}-alice",
             f"stockade-{A}1-alice", f"stockade-{A[:5]}-alice", "stockade-alice", f"stockade-upd-{A}",
             f"stockade-upd-{B}", f"stockade-{A}-", f"stockade-{A}-Bad", "other", f"x-stockade-{A}-alice")
    p = plan(Found(netns=names), A, ["stockade"])
    assert p.netns == (f"stockade-{A}-alice", f"stockade-{A}-alice.exchange", f"stockade-upd-{A}")
    assert plan(Found(netns=names), B, ["stockade"]).netns == (f"stockade-{B}-alice", f"stockade-upd-{B}")


def test_plan_takes_veths_by_alias_and_the_host_table_by_name() -> None:
    links = (Link(veth_name(A, "alice"), alias(A, "alice")), Link(veth_name(B, "alice"), alias(B, "alice")),
             Link("eth0", alias(A, "alice")),                 # not a stockade veth name: never
             Link("stkv0123456789", f"stockade:{A}1:alice"),  # a longer tag is another home
             Link("stkv0123456788", ""), Link("lo"))
    tables = (ruleset.host_table(A), ruleset.host_table(B), ruleset.host_table(A) + "0", ruleset.NS_TABLE, "filter")
    p = plan(Found(links=links, tables=tables), A, ["stockade"])
    assert p.veths == (veth_name(A, "alice"),)
    assert p.tables == (ruleset.host_table(A),)


def test_plan_takes_cgroups_below_the_homes_tag_deepest_first() -> None:
    paths = ("stockade", f"stockade/{A}", f"stockade/{A}/alice", f"stockade/{A}/alice/c123", f"stockade/{A}/bob",
             f"stockade/{B}", f"stockade/{B}/alice", f"stockade/{B}/alice/c9", f"stockade/{A}0/alice",
             f"other/{A}/alice", f"x/stockade/{A}/alice", f"stockade/{A}/../{B}", "system.slice")
    p = plan(Found(cgroups=paths), A, ["stockade", "custom/parent"])
    assert p.cgroups == (f"stockade/{A}/alice/c123", f"stockade/{A}/alice", f"stockade/{A}/bob", f"stockade/{A}")
    # a hostile parent never widens the plan
    assert plan(Found(cgroups=paths), A, ["..", "/", ""]).cgroups == ()


def test_invalid_tag_plans_nothing() -> None:
    found = Found(netns=("stockade--alice", "stockade-x-alice"), links=(Link("stkv0123456789", "stockade::alice"),),
                  tables=("stockade_egress_",), cgroups=("stockade", "stockade/alice"))
    for tag in ("", "x", "A1B2C3", "a1b2c3d", "../..", "a1b2c/"):
        assert plan(found, tag, ["stockade"]).empty(), tag


# -- end to end ------------------------------------------------------------------------------------
def _home(base: Path, parent: str) -> tuple[Path, str]:
    """A home whose agent `alice` has egress (namespace, veth, host table at start) and whose
    sandbox uses the shared cgroup `parent`; returns it with alice's key."""
    h = base / "home"
    cli_quick("init", "--policy", "open", home=h)   # setup: in this process
    text = (h / "stockade.yaml").read_text().replace("sandbox:\n", f"sandbox:\n  cgroup_parent: {parent}\n", 1)
    (h / "stockade.yaml").write_text(text + "egress:\n  resolver: null\n  poll: 0.3s\n")
    key = quick_json("agent", "create", "alice", home=h)["key"]
    (h / "policies" / "agents" / "alice.yaml").write_text("version: 1\nsandbox:\n  egress:\n    - '192.0.2.7:443'\n")
    return h, key


def _table(name: str) -> bool:
    try:
        nft.run_in_netns(None, [nft.list_table(name)])
        return True
    except (nft.NftError, OSError):
        return False


def _objects(home: Path, parent: str) -> dict[str, bool]:
    """Which of the home's kernel objects for alice exist now."""
    h = Home.at(home)
    tag = netns.home_tag(h)
    rel = cgroups.agent_rel(parent, tag, "alice")
    return {"netns": netns.is_netns(netns.netns_path(h, "alice")),
            "veth": os.path.exists(f"/sys/class/net/{veth_name(tag, 'alice')}"),
            "table": _table(ruleset.host_table(tag)),
            "cgroup": any(os.path.isdir(os.path.join(r, rel)) for r in hierarchy_roots(cgroups.detect()))}


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


def _call(srv: Server, key: str) -> None:
    """A sandboxed call: runs in alice's namespace and cgroup."""
    r = srv.invoke(key, "filesystem.list", {"path": "/workspace"})
    assert "result" in r, r


def _mark(home: Path) -> None:
    """An address on `lo` of the home's alice namespace: there as long as that namespace is."""
    name = netns.netns_name(Home.at(home), "alice")
    subprocess.run(["ip", "-n", name, "addr", "add", MARK, "dev", "lo"], check=True, capture_output=True)


def _marked(home: Path) -> bool:
    name = netns.netns_name(Home.at(home), "alice")
    out = subprocess.run(["ip", "-n", name, "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    return MARK in out.stdout


def _remove_parent(parent: str) -> None:
    for r in hierarchy_roots(cgroups.detect()):
        for d, _sub, _files in sorted(os.walk(os.path.join(r, parent)), key=lambda x: -x[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(d)


@pytest.mark.xdist_group("egress-netns")
def test_sigkill_leftovers_are_reclaimed_and_other_home_untouched(tmp_path: Path) -> None:
    need_root()
    parent = f"stockade-leftovers-{os.getpid()}"          # one cgroup parent shared by both homes
    (ha, key_a), (hb, key_b) = _home(tmp_path / "a", parent), _home(tmp_path / "b", parent)
    tag_a = netns.home_tag(Home.at(ha))
    roots = hierarchy_roots(cgroups.detect())
    sa, sb = start_server(ha), start_server(hb)
    try:
        _call(sa, key_a)
        _call(sb, key_b)
        assert _wait(lambda: all(_objects(ha, parent).values())), _objects(ha, parent)
        assert _wait(lambda: all(_objects(hb, parent).values())), _objects(hb, parent)
        _mark(hb)

        sa.proc.send_signal(signal.SIGKILL)
        sa.proc.wait(30)
        assert all(_objects(ha, parent).values()), "a SIGKILL leaves the home's kernel objects behind"
        # a call's leaf orphaned by the crash (a call that was running at the kill) stays too
        agent_rel = cgroups.agent_rel(parent, tag_a, "alice")
        leaves = [os.path.join(r, agent_rel, "c4000000") for r in roots if os.path.isdir(os.path.join(r, agent_rel))]
        for leaf in leaves:
            os.mkdir(leaf)
        _mark(ha)

        sa = start_server(ha)
        assert not any(os.path.exists(leaf) for leaf in leaves), "the orphaned leaf is reclaimed"
        assert _wait(lambda: _objects(ha, parent)["netns"] and _objects(ha, parent)["table"])
        assert not _marked(ha), "A's namespace is a fresh one"
        health = sa.invoke(key_a, "system.health")["result"]["layers"]["leftovers"]
        assert health["status"] == "ok" and not health["failed"], health
        for item in (f"netns stockade-{tag_a}-alice", f"veth {veth_name(tag_a, 'alice')}",
                     f"nft table inet {ruleset.host_table(tag_a)}", f"cgroup {agent_rel}/c4000000"):
            assert item in health["removed"], (item, health)
        logs = "".join(p.read_text() for p in (tmp_path / "a").glob("serve-*.log"))
        assert f"reclaimed crash leftover of home {tag_a}: netns stockade-{tag_a}-alice" in logs, logs
        # B: the same agent name under the same cgroup parent, untouched and still serving
        assert all(_objects(hb, parent).values()), _objects(hb, parent)
        assert _marked(hb), "B's namespace is the same one"
        _call(sb, key_b)
        _call(sa, key_a)
    finally:
        sa.stop()
        sb.stop()
        _remove_parent(parent)
