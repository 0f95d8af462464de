"""Reclaim after a crash (issue 20): `stockade serve` SIGKILLed with an upstream server running
leaves the server's cgroup and its network namespaces behind (the processes die with it: each
launcher has a parent-death signal); the next start of the same home removes them before it
builds anything, and a clean stop afterwards leaves nothing of the home at all.

Needs root and the kernel layers. The server is tests/upstream/tiny_server.py under the system
Python: it starts in milliseconds, so the two gateway starts stay cheap.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.conftest import need, need_root, run_cli, start_server

from stockade.core.home import Home
from stockade.egress import netns
from stockade.sandbox import cgroups
from stockade.sandbox.leftovers import hierarchy_roots
from stockade.upstream import confine

pytestmark = pytest.mark.xdist_group("upstream-crash")

TINY = Path(__file__).resolve().parent / "tiny_server.py"
PYTHON = "/usr/bin/python3"
ORG = """\
version: 1
default: approval_required
rules:
  - {id: sys, capability: "system.*", tier: autonomous}
  - {id: tiny, capability: "tiny.*", tier: autonomous}
"""


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _objects(home: Path) -> dict[str, bool]:
    """Which of the home's upstream kernel objects exist now."""
    h = Home.at(home)
    tag = netns.home_tag(h)
    alice_ns = netns.netns_name(h, netns.pack_principal("alice", confine.principal_pack("tiny")))
    tree = os.path.join(confine.CGROUP_PARENT, tag)
    roots = hierarchy_roots(cgroups.detect())
    return {"alice netns": netns.is_netns(f"/run/netns/{alice_ns}"),
            "discovery netns": netns.is_netns(f"/run/netns/stockade-upd-{tag}"),
            "alice cgroup": any(os.path.isdir(os.path.join(r, tree, "alice.tiny")) for r in roots),
            "cgroup tree": any(os.path.isdir(os.path.join(r, tree)) for r in roots)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_a_sigkilled_gateways_upstream_leftovers_are_reclaimed(tmp_path: Path) -> None:
    need_root()
    need(os.path.exists(PYTHON), f"{PYTHON} is not installed")
    home = tmp_path / "home"
    run_cli("init", home=home)
    (home / "policies" / "org.yaml").write_text(ORG)
    tiny = {"command": PYTHON, "args": ["-I", "-S", str(TINY)], "filesystem": [{"path": str(TINY.parent)}],
            "startup_timeout": 60}
    (home / "upstream.yaml").write_text(yaml.safe_dump({"servers": {"tiny": tiny}}))
    s = start_server(home, timeout=120)
    try:
        key = s.agent("alice")
        r = s.invoke(key, "tiny.ping")
        assert "result" in r, r
        launcher = s.invoke(key, "system.health")["result"]["layers"]["upstream"]["servers"]["tiny"][
            "instances"]["alice"]["pid"]
        assert all(_objects(home).values()), _objects(home)

        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(30)
        assert _wait(lambda: not _alive(launcher)), "the server dies with the gateway (parent-death signal)"
        left = _objects(home)
        assert left["alice netns"] and left["alice cgroup"], ("a SIGKILL leaves them behind", left)

        s = start_server(home, timeout=120)
        now = _objects(home)
        assert not now["alice netns"] and not now["alice cgroup"], now
        tag = netns.home_tag(Home.at(home))
        health = s.invoke(key, "system.health")["result"]["layers"]
        removed = health["upstream"]["leftovers"]["removed"] + health.get("leftovers", {}).get("removed", [])
        assert f"cgroup {confine.CGROUP_PARENT}/{tag}/alice.tiny/server" in removed, health["upstream"]
        assert any(x.startswith("netns ") and x.endswith("alice.up-tiny") for x in removed), removed
        assert "result" in s.invoke(key, "tiny.ping")       # and the server runs again
    finally:
        assert s.stop() == 0
    assert not any(_objects(home).values()), ("a clean stop leaves nothing", _objects(home))
