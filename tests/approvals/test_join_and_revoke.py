"""Issue 13: joining an existing approval is atomic; a revoked agent's held call never runs.

Real pipeline, real ApprovalService, real SQLite store. The audit hook yields to the event loop
on every record, as the real writer does while it fsyncs (that yield is where the join raced).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stockade.approvals import store
from stockade.core import agents
from stockade.core.errors import StockadeError
from stockade.gateway.pipeline import MemoryAudit

from .helpers import Gw, call, until

ARGS = {"argv": ["make", "deploy"]}


class YieldingAudit(MemoryAudit):
    async def record(self, rec: dict[str, Any]) -> None:
        await asyncio.sleep(0)          # the writer awaits its fsync thread here
        self.records.append(rec)


def _gw(tmp_path: Path, hold: float = 30.0) -> Gw:
    gw = Gw(tmp_path, hold=hold)
    gw.audit = YieldingAudit()
    gw.pipeline.audit = gw.audit
    return gw


def test_identical_concurrent_calls_make_one_approval(tmp_path: Path) -> None:
    gw = _gw(tmp_path, hold=0.5)
    alice = gw.agent("alice")

    async def main() -> list[Any]:
        return await asyncio.gather(*(call(gw, alice, "process.run", dict(ARGS)) for _ in range(3)))

    out = asyncio.run(main())
    rows = store.list_(gw.db, limit=100)
    assert len(rows) == 1, [r.id for r in rows]
    assert all(isinstance(r, StockadeError) and r.type == "ApprovalPending" for r in out)
    assert {r.data["approval"] for r in out} == {rows[0].id}      # every caller was told the same id
    assert [r.get("kind") for r in gw.records()].count("approval.requested") == 1


def test_joins_of_different_calls_stay_separate(tmp_path: Path) -> None:
    gw = _gw(tmp_path, hold=0.3)
    alice, bob = gw.agent("alice"), gw.agent("bob")

    async def main() -> None:
        await asyncio.gather(call(gw, alice, "process.run", ARGS), call(gw, bob, "process.run", ARGS),
                             call(gw, alice, "process.run", {"argv": ["make", "other"]}))

    asyncio.run(main())
    assert len(store.list_(gw.db, limit=100)) == 3


def test_revoke_while_held_the_call_never_runs(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    alice = gw.agent("alice")
    gw.agent("bob")

    async def main() -> None:
        held = asyncio.create_task(call(gw, alice, "process.run", ARGS))
        await until(lambda: gw.svc.list("pending"))
        aid = gw.svc.list("pending")[0]["approval"]
        grant = await gw.svc.grant("alice", "network.http_request", 60, by="test")
        other = await gw.svc.grant("bob", "network.http_request", 60, by="test")
        out = await gw.svc.revoke_agent("alice", by={"via": "test"})
        assert out["expired_approvals"] == [aid] and out["ended_grants"] == [grant["grant"]]
        r = await asyncio.wait_for(held, 5)
        assert isinstance(r, StockadeError) and r.type == "Unauthenticated" and r.data["approval"] == aid
        shown = gw.svc.show(aid)
        assert shown["status"] == "expired" and "revoked" in shown["reason"]
        with pytest.raises(StockadeError) as e:
            await gw.svc.decide(aid, "approve", by="test")
        assert e.value.type == "ApprovalExpired"
        live = {g["grant"] for g in gw.svc.grants()}
        assert grant["grant"] not in live and other["grant"] in live
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert gw.runs == []
    kinds = [r.get("kind") for r in gw.records()]
    assert "agent.revoked" in kinds
    expired = [r for r in gw.records() if r.get("kind") == "approval.expired"]
    assert expired and expired[0]["reason"] == "agent revoked"
    ended = [r for r in gw.records() if r.get("decision") == "grant_revoked"]
    assert len(ended) == 1


def test_revoke_through_the_store_alone_expires_approvals_and_grants(tmp_path: Path) -> None:
    """The dashboard and the offline CLI revoke in the store: the same transaction ends both."""
    gw = _gw(tmp_path, hold=0.2)
    alice = gw.agent("alice")

    async def main() -> str:
        r = await call(gw, alice, "process.run", ARGS)
        assert isinstance(r, StockadeError) and r.type == "ApprovalPending"
        await gw.svc.grant("alice", "network.http_request", 60, by="test")
        return r.data["approval"]

    aid = asyncio.run(main())
    ended = agents.revoke_ending(gw.db, "alice")
    assert ended["approvals"] == [aid] and len(ended["grants"]) == 1
    assert store.get(gw.db, aid).status == "expired"          # type: ignore[union-attr]
    assert gw.svc.grants() == []


def test_approved_in_background_after_revoke_never_runs(tmp_path: Path) -> None:
    gw = _gw(tmp_path, hold=0.2)
    alice = gw.agent("alice")

    async def main() -> None:
        r = await call(gw, alice, "process.run", ARGS)     # the hold ends: nobody waits any more
        aid = r.data["approval"]                            # type: ignore[union-attr]
        agents.revoke(gw.db, "alice")                       # e.g. the dashboard, straight in the store
        with pytest.raises(StockadeError) as e:
            await gw.svc.decide(aid, "approve", by="test")
        assert e.value.type == "ApprovalExpired"
        await asyncio.sleep(0.2)

    asyncio.run(main())
    assert gw.runs == []


@pytest.mark.parametrize("background", [False, True])
def test_rotated_key_while_held_runs_on_neither_path(tmp_path: Path, background: bool) -> None:
    """The approval binds the key that asked: foreground and background re-check it alike."""
    gw = _gw(tmp_path, hold=0.3 if background else 30)
    alice = gw.agent("alice")

    async def main() -> None:
        held = asyncio.create_task(call(gw, alice, "process.run", ARGS))
        await until(lambda: gw.svc.list("pending"))
        aid = gw.svc.list("pending")[0]["approval"]
        if background:
            first = await held                                  # ApprovalPending: nobody holds it now
            assert isinstance(first, StockadeError) and first.type == "ApprovalPending"
        agents.rotate(gw.db, "alice")
        await gw.svc.decide(aid, "approve", by="test")
        if not background:
            r = await asyncio.wait_for(held, 5)
            assert isinstance(r, StockadeError) and r.type == "Unauthenticated"
        await until(lambda: gw.svc.show(aid)["status"] == "failed")
        assert gw.svc.show(aid)["error"]["type"] == "Unauthenticated"

    asyncio.run(main())
    assert gw.runs == []


def test_rotate_does_not_reactivate_a_revoked_agent(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    gw.agent("alice")
    agents.revoke(gw.db, "alice")
    with pytest.raises(StockadeError) as e:
        agents.rotate(gw.db, "alice")
    assert e.value.type == "InvalidInput" and "reactivate" in e.value.message
    assert not agents.get(gw.db, "alice").active
    key = agents.rotate(gw.db, "alice", reactivate=True)
    assert agents.authenticate(gw.db, key).name == "alice"
