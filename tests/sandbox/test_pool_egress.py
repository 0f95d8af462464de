"""The pool's per-call egress guard (issue 16) fails closed like a cold call's.

A pre-armed child joined the agent's namespace when it was armed; rules can vanish before its
call. The zygote checks them again at hand-over, inside the call's namespace: with the tables
deleted, or the chain replaced by one that accepts, the call must not run (the child is
discarded unused, the cold retry fails closed; without the hand-over check the command
connects). Real kernel throughout, the egress manager's own namespace, veth and tables
(tests/egress/topo.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.conftest import need, need_root
from tests.egress.conftest import net  # noqa: F401 - the module-wide test hosts
from tests.egress.topo import A_IP, B_IP
from tests.sandbox.testing import wait_ready

from stockade.core.errors import StockadeError
from stockade.core.types import Caller
from stockade.egress import nft, ruleset
from stockade.egress.manager import Egress, Settings
from stockade.sandbox import cgroups

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("egress-netns")]

CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 8080), 3).close()\n"
           "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n")


class _Pol:
    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return {"egress": [f"{A_IP}:8080"]}


@pytest.fixture
def pooled_egress(net, tmp_path: Path) -> Iterator[Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    need_root()
    need(os.path.exists("/usr/bin/python3"), "needs /usr/bin/python3 for the sandboxed command")
    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox.executor import SandboxExecutor

    home = Home.at(tmp_path / "home")
    init_home(home)
    db = home.db()
    name = f"pe{os.getpid()}"
    agents.create(db, name)
    db.commit()
    eg = Egress(home, Settings(resolver=None), lambda agent: [f"{A_IP}:8080"])
    eg.reconcile()
    parent = f"stockade-pe-{os.getpid()}"
    ex = SandboxExecutor(home, call_timeout=15, cgroup_parent=parent, pool=True)
    ex.db = db
    ex.policy = _Pol()
    ex.start_zygote()
    caller = Caller(name, b"", "s", "test")
    run_def = SimpleNamespace(name="process.run", pack=None)

    def connect(ip: str) -> str:
        r = asyncio.run(ex.run(caller, run_def, {"argv": ["python3", "-c", CONNECT, ip]}, "call"))
        return str(r["stdout"]).strip()

    try:
        yield SimpleNamespace(eg=eg, ex=ex, name=name, connect=connect)
    finally:
        ex.stop()
        eg.teardown()
        cgroups.remove_tree(cgroups.detect(), parent)
        db.close()


def _armed_then_served(s: Any) -> None:
    """A call that creates the slot, then one served by a pre-armed child (the guard passes)."""
    assert s.connect(A_IP) == "connected"
    wait_ready(s.ex)
    assert s.connect(B_IP).startswith("refused")
    assert s.ex.last_child["pooled"] is True, s.ex.last_child
    wait_ready(s.ex)


def test_a_pooled_call_fails_closed_when_the_tables_vanish(pooled_egress) -> None:  # type: ignore[no-untyped-def]
    s = pooled_egress
    _armed_then_served(s)
    st = s.eg.agents[s.name]
    for path, table in ((st.netns, ruleset.NS_TABLE), (None, ruleset.host_table(s.eg.tag))):
        nft.run_in_netns(path, [[{"delete": {"table": {"family": "inet", "name": table}}}]])
    with pytest.raises(StockadeError) as ei:
        s.connect(B_IP)
    assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
    s.eg.reconcile()                                   # restored: pooled calls are served again
    wait_ready(s.ex)
    assert s.connect(B_IP).startswith("refused") and s.ex.last_child["pooled"] is True


def test_a_pooled_call_fails_closed_on_an_accepting_chain(pooled_egress) -> None:  # type: ignore[no-untyped-def]
    s = pooled_egress
    _armed_then_served(s)
    st = s.eg.agents[s.name]
    nft.run_in_netns(None, [[{"delete": {"table": {"family": "inet", "name": ruleset.host_table(s.eg.tag)}}}]])
    chain = {"family": "inet", "table": ruleset.NS_TABLE, "name": "output"}
    nft.run_in_netns(st.netns, [[{"delete": {"chain": chain}}],
                                [{"add": {"chain": {**chain, "type": "filter", "hook": "output", "prio": 0,
                                                    "policy": "accept"}}}]])
    with pytest.raises(StockadeError) as ei:
        s.connect(B_IP)
    assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
