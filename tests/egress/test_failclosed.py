"""Egress fails closed when its nftables tables vanish underneath it (issue 23 item 4).

Real kernel throughout: the egress manager builds the agent's namespace, veth and both tables;
the shipped sandbox executor runs `process.run` in that namespace with Landlock allowing port
8080, so only nftables stands between the command and B (not on the agent's allowlist).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.conftest import need, need_root
from tests.egress.topo import A_IP, B_IP

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


@contextlib.contextmanager
def egress_executor(tmp_path: Path, tag: str, **executor: Any) -> Iterator[Any]:
    """The shipped executor for one agent whose namespace and tables the egress manager built
    (`executor` goes to SandboxExecutor: `pool=True` for the pooled variant of these tests)."""
    need_root()
    need(os.path.exists("/usr/bin/python3"), "needs /usr/bin/python3 for the sandboxed command")
    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox.executor import SandboxExecutor

    home = Home.at(tmp_path / "home")
    init_home(home)
    db = home.db()
    name = f"{tag}{os.getpid()}"
    agents.create(db, name)
    db.commit()
    eg = Egress(home, Settings(resolver=None), lambda agent: [f"{A_IP}:8080"])
    eg.reconcile()
    parent = f"stockade-{tag}-{os.getpid()}"
    ex = SandboxExecutor(home, call_timeout=15, cgroup_parent=parent, **executor)
    ex.db = db
    ex.policy = _Pol()
    ex.start_zygote()
    caller = Caller(name, b"", "s", "test")
    run_def = SimpleNamespace(name="process.run", pack=None)

    def connect(ip: str) -> str:
        r = asyncio.run(ex.run(caller, run_def, {"argv": ["python3", "-c", CONNECT, ip]}, "call"))
        return str(r["stdout"]).strip()

    try:
        yield SimpleNamespace(eg=eg, ex=ex, home=home, name=name, connect=connect)
    finally:
        ex.stop()
        eg.teardown()
        cgroups.remove_tree(cgroups.detect(), parent)
        db.close()


@pytest.fixture
def setup(net, tmp_path: Path) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    with egress_executor(tmp_path, "fc") as s:
        yield s


def accepting_chain(s: Any) -> None:
    """The host table deleted and the namespace's output chain replaced by one that accepts."""
    st = s.eg.agents[s.name]
    nft.run_in_netns(None, [[{"delete": {"table": {"family": "inet", "name": ruleset.host_table(s.eg.tag)}}}]])
    chain = {"family": "inet", "table": ruleset.NS_TABLE, "name": "output"}
    nft.run_in_netns(st.netns, [[{"delete": {"chain": chain}}],
                                [{"add": {"chain": {**chain, "type": "filter", "hook": "output", "prio": 0,
                                                    "policy": "accept"}}}]])


def delete_tables(s: Any) -> None:
    st = s.eg.agents[s.name]
    for path, table in ((st.netns, ruleset.NS_TABLE), (None, ruleset.host_table(s.eg.tag))):
        nft.run_in_netns(path, [[{"delete": {"table": {"family": "inet", "name": table}}}]])


def test_calls_fail_closed_when_the_tables_vanish(setup) -> None:  # type: ignore[no-untyped-def]
    s = setup
    assert s.connect(A_IP) == "connected"
    assert s.connect(B_IP).startswith("refused")          # nftables: B is not on the allowlist
    delete_tables(s)
    for ip in (B_IP, A_IP):                                 # nothing runs with network now
        with pytest.raises(StockadeError) as ei:
            s.connect(ip)
        assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
    # the next reconcile (every poll) restores them and says so
    changes = s.eg.reconcile()
    assert s.name in changes["repaired"] and "host" in changes["repaired"], changes
    assert s.name in s.eg.repairs[-1]["repaired"]         # what health reports (egress.repairs)
    assert s.connect(A_IP) == "connected"
    assert s.connect(B_IP).startswith("refused")


def test_a_flushed_output_chain_fails_closed_too(setup) -> None:  # type: ignore[no-untyped-def]
    """A variation: the chain is replaced by one that accepts; the host table is gone too."""
    s = setup
    accepting_chain(s)
    with pytest.raises(StockadeError) as ei:
        s.connect(B_IP)
    assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
