"""The pool's per-call egress guard (issue 16) fails closed like a cold call's.

A pre-armed child joined the agent's namespace when it was armed; rules can vanish before its
call. The zygote checks them again at hand-over, inside the call's namespace: with the tables
deleted, or the chain replaced by one that accepts, the call must not run (the child is
discarded unused, the cold retry fails closed; without the hand-over check the command
connects). Real kernel throughout, the egress manager's own namespace, veth and tables
(tests/egress/topo.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.egress.conftest import net  # noqa: F401 - the module-wide test hosts
from tests.egress.test_failclosed import accepting_chain, delete_tables, egress_executor
from tests.egress.topo import A_IP, B_IP
from tests.sandbox.testing import wait_ready

from stockade.core.errors import StockadeError

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("egress-netns")]


@pytest.fixture
def pooled_egress(net, tmp_path: Path) -> Iterator[Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    with egress_executor(tmp_path, "pe", pool=True) as s:
        yield s


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
    delete_tables(s)
    with pytest.raises(StockadeError) as ei:
        s.connect(B_IP)
    assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
    s.eg.reconcile()                                   # restored: pooled calls are served again
    wait_ready(s.ex)
    assert s.connect(B_IP).startswith("refused") and s.ex.last_child["pooled"] is True


def test_a_pooled_call_fails_closed_on_an_accepting_chain(pooled_egress) -> None:  # type: ignore[no-untyped-def]
    s = pooled_egress
    _armed_then_served(s)
    accepting_chain(s)
    with pytest.raises(StockadeError) as ei:
        s.connect(B_IP)
    assert ei.value.type == "SandboxUnavailable" and "egress rules missing" in ei.value.message
