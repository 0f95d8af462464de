"""A pack's reach is exactly its granted entries, not the agent's (issue 14 item 4).

Real gateway, real kernel: two test hosts stand in for public servers on the same port,
A = 198.51.100.61:8080 and B = 203.0.113.62:8080 (TEST-NET-2/3 in namespaces we create). The
agent's policy allows both. A signed test pack declares only A. Landlock allows port 8080 for the
pack's calls (A's port), so only the network namespace and its nftables stand between the pack
and B: the pack must reach A and never B, while the agent's own `process.run` reaches both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.conftest import cli_quick, need_root, quick_json, start_server
from tests.egress.topo import TestHost

from stockade.core import admin
from stockade.core.home import Home
from stockade.egress import netns, nft, ruleset

# A group of its own: its test hosts' addresses (A, B below) are used by no other test, so it need
# not wait behind the egress-netns group (which shares topo.py's addresses).
pytestmark = [pytest.mark.root, pytest.mark.xdist_group("egress-pack")]

A, B, PORT = "198.51.100.61", "203.0.113.62", 8080
AGENT, PACK = "probe", "netprobe"

PACK_YAML = f"""
name: {PACK}
version: 1.0.0
publisher: example
min_stockade: 0.1.0
description: Connects to an address and says whether it got through (egress test pack).
sandbox:
  seccomp: strict
  memory: 64MiB
  egress: ['{A}:{PORT}', '198.51.100.99:{PORT}']
capabilities:
  - name: {PACK}.connect
    entry: probe:connect
    purpose: Open a TCP connection and close it.
    when_to_use: tests
    default_tier: autonomous
    side_effects: false
    input:
      type: object
      required: [ip, port]
      additionalProperties: false
      properties:
        ip: {{type: string}}
        port: {{type: integer}}
    output:
      type: object
      required: [connected, error]
      properties:
        connected: {{type: boolean}}
        error: {{type: string}}
"""

PROBE = """import socket


def connect(args):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((args["ip"], args["port"]))
        return {"connected": True, "error": ""}
    except OSError as e:
        return {"connected": False, "error": type(e).__name__ + " " + str(e.errno)}
    finally:
        s.close()
"""

CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()\n"
           "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n")


def _wait(cond: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SimpleNamespace]:
    need_root()
    hosts = [TestHost(21, A, tmp_path), TestHost(22, B, tmp_path)]
    try:
        for h in hosts:
            h.up().serve_http(PORT)
        home = tmp_path / "home"
        cli_quick("init", home=home)     # setup through the CLI in this process: not under test here
        with open(home / "stockade.yaml", "a") as f:
            # no polling during the test: the rules are loaded at start and per pack call, and
            # restored on `egress.reload` (so a vanished table stays vanished until we ask)
            f.write("egress:\n  resolver: null\n  poll: 1h\n")
        (home / "policies" / "org.yaml").write_text("version: 1\ndefault: autonomous\nrules: []\n")
        (home / "policies" / "agents" / f"{AGENT}.yaml").write_text(
            f"version: 1\nsandbox:\n  egress: ['{A}:{PORT}', '{B}:{PORT}']\n")
        keys = quick_json("pack", "keygen", "--out", str(tmp_path / "pub"))
        quick_json("pack", "trust", keys["pub"], "--name", "example", home=home)
        d = tmp_path / PACK
        (d / "src").mkdir(parents=True)
        (d / "pack.yaml").write_text(PACK_YAML)
        (d / "src" / "__init__.py").write_text("")
        (d / "src" / "probe.py").write_text(PROBE)
        quick_json("pack", "sign", str(d), "--key", keys["key"])
        quick_json("pack", "install", str(d), home=home)
        key = quick_json("agent", "create", AGENT, home=home)["key"]
        srv = start_server(home)
        try:
            yield SimpleNamespace(srv=srv, key=key, home=home, a=hosts[0], b=hosts[1])
        finally:
            srv.stop()
    finally:
        for h in hosts:
            h.down()


def _pack(w: SimpleNamespace, ip: str) -> dict[str, Any]:
    return w.srv.invoke(w.key, f"{PACK}.connect", {"ip": ip, "port": PORT})


def _agent(w: SimpleNamespace, ip: str) -> str:
    r = w.srv.invoke(w.key, "process.run", {"argv": ["python3", "-c", CONNECT, ip, str(PORT)]})
    return str(r.get("result", {}).get("stdout", r)).strip()


def test_a_pack_reaches_only_its_granted_hosts_not_the_agents_whole_list(world: SimpleNamespace) -> None:
    w = world
    # the agent itself reaches both (so B is reachable: only the pack's own rules can stop it)
    assert _wait(lambda: _agent(w, A) == "connected"), _agent(w, A)
    assert _agent(w, B) == "connected"
    b_before = len(w.b.connections(PORT))
    # the pack, granted A only, reaches A ...
    r = _wait(lambda: _pack(w, A).get("result", {}).get("connected"))
    assert r is True, _pack(w, A)
    # ... and never B, although B's port is A's port (Landlock allows it) and the agent may go there
    for _ in range(3):
        r = _pack(w, B)
        assert r["result"] == {"connected": False, "error": r["result"]["error"]}, r
    assert len(w.b.connections(PORT)) == b_before
    # an address that is in the pack's manifest but not granted by the policy: nothing either
    assert _pack(w, "198.51.100.99")["result"]["connected"] is False


def test_a_pack_call_fails_closed_when_its_rules_vanish(world: SimpleNamespace) -> None:
    """The per-call guard checks the pack's namespace, not only the agent's."""
    w = world
    assert _wait(lambda: _pack(w, A).get("result", {}).get("connected")) is True, _pack(w, A)
    path = netns.netns_path(Home.at(w.home), netns.pack_principal(AGENT, PACK))
    nft.run_in_netns(path, [[{"delete": {"table": {"family": "inet", "name": ruleset.NS_TABLE}}}]])
    for ip in (B, A):                                   # nothing of the pack runs with network now
        r = _pack(w, ip)
        assert r["error"]["data"]["type"] == "SandboxUnavailable", r
        assert "egress rules missing" in r["error"]["message"], r
    # the next reconcile restores them and says so; A works again, B still not
    changes = admin.call(Home.at(w.home), "egress.reload")["changes"]
    assert netns.pack_principal(AGENT, PACK) in changes["repaired"], changes
    assert _pack(w, A)["result"]["connected"] is True
    assert _pack(w, B)["result"]["connected"] is False
