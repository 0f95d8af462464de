"""The approvals hook on a real pipeline (SQLite, registry, in-memory audit): hold, approve,
reject, expire, exactly-once, argument binding, grants, agent-side status."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stockade.core.errors import StockadeError

from .conftest import Env, until


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _pending_id(env: Env) -> str:
    await until(lambda: env.svc.list("pending"))
    return env.svc.list("pending")[0]["approval"]


def test_held_call_runs_once_after_approval(env: Env) -> None:
    async def main() -> None:
        task = asyncio.create_task(env.pipeline.invoke(env.caller, "test.echo", {"text": "hi", "n": 1}))
        aid = await _pending_id(env)
        assert env.runs == []                      # held, not executed
        first = await env.svc.decide(aid, "approve", by="test")
        assert first["changed"] is True
        result = await asyncio.wait_for(task, 5)
        assert result["echo"] == {"text": "hi", "n": 1}
        again = await env.svc.decide(aid, "approve", by="test")       # idempotent
        late = await env.svc.decide(aid, "reject", by="test", reason="late")
        assert again["changed"] is False and late["changed"] is False and late["conflict"] is True
        await asyncio.sleep(0.1)
        assert env.runs == [{"text": "hi", "n": 1}]   # exactly once
        st = await env.svc.status("alice", aid)
        assert st["status"] == "executed" and st["result"]["echo"] == {"text": "hi", "n": 1}
        kinds = env.kinds()
        assert kinds.index("approval.requested") < kinds.index("approval.decided") < \
            kinds.index("call:test.echo:outcome:ok")
        assert kinds.count("approval.decided") == 1

    run(main())


def test_changed_arguments_need_their_own_approval(env: Env) -> None:
    async def main() -> None:
        t1 = asyncio.create_task(env.pipeline.invoke(env.caller, "test.echo", {"text": "a"}))
        aid = await _pending_id(env)
        await env.svc.decide(aid, "approve", by="test")
        await asyncio.wait_for(t1, 5)
        t2 = asyncio.create_task(env.pipeline.invoke(env.caller, "test.echo", {"text": "b"}))
        await until(lambda: env.svc.list("pending"))
        aid2 = env.svc.list("pending")[0]["approval"]
        assert aid2 != aid and env.runs == [{"text": "a"}]
        await env.svc.decide(aid2, "reject", by="test", reason="no <b>")
        with pytest.raises(StockadeError) as e:
            await asyncio.wait_for(t2, 5)
        assert e.value.type == "ApprovalRejected" and e.value.data["approval"] == aid2
        assert env.runs == [{"text": "a"}]

    run(main())


def test_same_arguments_in_other_key_order_are_the_same_call(env: Env) -> None:
    from stockade.approvals.core import args_hash

    assert args_hash({"text": "x", "n": 1}) == args_hash({"n": 1, "text": "x"})
    assert args_hash({"text": "x", "n": 1}) != args_hash({"text": "x", "n": 2})


def test_hold_timeout_then_background_execution_and_status(tmp_path: Any) -> None:
    env = Env(tmp_path, hold=0.3)

    async def main() -> None:
        with pytest.raises(StockadeError) as e:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "later"})
        assert e.value.type == "ApprovalPending"
        aid = e.value.data["approval"]
        assert aid and env.runs == []
        st = await env.svc.status("alice", aid)
        assert st["status"] == "pending" and st["final"] is False
        # Other agents cannot see it.
        with pytest.raises(StockadeError) as e2:
            await env.svc.status("bob", aid)
        assert e2.value.type == "ApprovalNotFound"
        waiter = asyncio.create_task(env.svc.status("alice", aid, wait=0.3 + 5))
        await env.svc.decide(aid, "approve", by="test")
        st = await asyncio.wait_for(waiter, 5)
        assert st["status"] == "executed" and st["result"]["echo"] == {"text": "later"}
        assert env.runs == [{"text": "later"}]
        # The raw arguments are gone once the approval is final.
        row = env.db.execute("SELECT args_json FROM approvals WHERE id=?", (aid,)).fetchone()
        assert row[0] is None

    run(main())


def test_retry_after_hold_joins_the_pending_approval(tmp_path: Any) -> None:
    env = Env(tmp_path, hold=0.2)

    async def main() -> None:
        with pytest.raises(StockadeError) as e:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "r"})
        aid = e.value.data["approval"]
        env.svc.hold_seconds = 5
        t = asyncio.create_task(env.pipeline.invoke(env.caller, "test.echo", {"text": "r"}))
        await until(lambda: aid in env.svc._waiters)
        # A third identical call while one is held is told at once, not queued twice.
        with pytest.raises(StockadeError) as e3:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "r"})
        assert e3.value.type == "ApprovalPending" and e3.value.data["approval"] == aid
        assert len(env.svc.list("pending")) == 1
        await env.svc.decide(aid, "approve", by="test")
        assert (await asyncio.wait_for(t, 5))["echo"] == {"text": "r"}
        await asyncio.sleep(0.1)
        assert env.runs == [{"text": "r"}]

    run(main())


def test_other_calls_of_the_agent_are_not_blocked(env: Env) -> None:
    async def main() -> None:
        held = asyncio.create_task(env.pipeline.invoke(env.caller, "test.echo", {"text": "wait"}))
        await _pending_id(env)
        info = await asyncio.wait_for(env.pipeline.invoke(env.caller, "system.info", {}), 2)
        assert info["product"] == "stockade"
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held

    run(main())


def test_expiry(tmp_path: Any) -> None:
    env = Env(tmp_path, hold=0.2, ttl=60)

    async def main() -> None:
        with pytest.raises(StockadeError) as e:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "old"})
        aid = e.value.data["approval"]
        env.clock.t += 61
        with pytest.raises(StockadeError) as e2:
            await env.svc.decide(aid, "approve", by="test")
        assert e2.value.type == "ApprovalExpired"
        assert env.svc.show(aid)["status"] == "expired"
        late = await env.svc.decide(aid, "reject", by="test")
        assert late["status"] == "expired" and late["changed"] is False
        await asyncio.sleep(0.1)
        assert env.runs == []
        assert "approval.expired" in env.kinds()

    run(main())


def test_unknown_id_is_a_clear_error(env: Env) -> None:
    async def main() -> None:
        for bad in ("apr_nope", "", "x" * 500):
            with pytest.raises(StockadeError) as e:
                await env.svc.decide(bad, "approve", by="test")
            assert e.value.type == "ApprovalNotFound"
        assert env.runs == []

    run(main())


def test_grant_allows_capability_for_a_while(env: Env) -> None:
    async def main() -> None:
        g = await env.svc.grant("alice", "test.echo", 5, by="test", reason="batch job")
        r = await asyncio.wait_for(env.pipeline.invoke(env.caller, "test.echo", {"text": "g"}), 2)
        assert r["echo"] == {"text": "g"}
        assert "approval.grant_used" in env.kinds()
        # Not for another agent, and not after expiry or revocation.
        bob = env.other_caller("bob")
        with pytest.raises(StockadeError):
            await asyncio.wait_for(env.pipeline.invoke(bob, "test.echo", {"text": "b"}), 5)
        env.clock.t += 5 * 60 + 1
        with pytest.raises(StockadeError):
            await asyncio.wait_for(env.pipeline.invoke(env.caller, "test.echo", {"text": "g2"}), 5)
        env.clock.t -= 5 * 60 + 1
        await env.svc.revoke_grant(g["grant"], by="test")
        with pytest.raises(StockadeError):
            await asyncio.wait_for(env.pipeline.invoke(env.caller, "test.echo", {"text": "g3"}), 5)
        assert env.runs == [{"text": "g"}]
        with pytest.raises(StockadeError):
            await env.svc.grant("alice", "test.echo", 0, by="test")
        with pytest.raises(StockadeError):
            await env.svc.grant("alice", "no.such", 5, by="test")

    env.svc.hold_seconds = 0.2
    run(main())


def test_policy_blocking_after_approval_wins(tmp_path: Any) -> None:
    """The background execution re-enters the whole pipeline: a policy that now blocks, wins."""
    env = Env(tmp_path, hold=0.2)

    async def main() -> None:
        with pytest.raises(StockadeError) as e:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "p"})
        aid = e.value.data["approval"]
        env.policy.tiers["test.echo"] = "blocked"
        await env.svc.decide(aid, "approve", by="test")
        await until(lambda: env.svc.show(aid)["status"] == "failed")
        assert env.svc.show(aid)["error"]["type"] in ("PolicyDenied", "CapabilityNotFound")
        assert env.runs == []

    run(main())


def test_restart_never_runs_a_call_twice(tmp_path: Any) -> None:
    env = Env(tmp_path, hold=0.2)

    async def main() -> None:
        with pytest.raises(StockadeError) as e:
            await env.pipeline.invoke(env.caller, "test.echo", {"text": "x"})
        aid = e.value.data["approval"]
        env.db.execute("UPDATE approvals SET status='running' WHERE id=?", (aid,))  # crashed mid-call
        await env.svc.start()
        await env.svc.stop()
        assert env.svc.show(aid)["status"] == "failed"
        assert env.runs == []

    run(main())
