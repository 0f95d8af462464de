"""`notifications/tasks` on `subscriptions/listen` (issue 19, SEP-2663 "Task Status Notifications")
through a real `stockade serve`, raw JSON-RPC (the `mcp` SDK's listen client has no `taskIds`):
only the caller's own tasks are honoured and acknowledged, each frame is the DetailedTask `tasks/get`
returns and carries the subscription id, `taskIds` need the extension (-32021) and a well-formed
list (-32602), and a refused listen changes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from mcp_types import SubscriptionFilter
from tests.conftest import Server, cli_json, start_server
from tests.gateway.test_listen import SUB_ID, Stream
from tests.gateway.test_tasks import EXT, WITH, WITHOUT, _task_home, call, task_get, tool

from stockade.core.errors import StockadeError
from stockade.gateway import listen

pytestmark = pytest.mark.xdist_group("tasks-gateway")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_server(_task_home(tmp_path_factory.mktemp("listen-tasks")))
    yield s
    s.stop()


def _tasks(frames: list[dict[str, Any]], tid: str) -> list[dict[str, Any]]:
    return [f["params"] for f in frames if f.get("method") == "notifications/tasks" and f["params"]["taskId"] == tid]


def _cli(*args: str, home: Path) -> Any:
    return asyncio.to_thread(cli_json, *args, home=home)


def test_own_task_changes_are_pushed_as_tasks_get_would_answer(srv: Server) -> None:
    key, other = srv.agent("push-owner"), srv.agent("push-other")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    theirs = tool(srv, other, "system.time")["result"]["taskId"]

    async def go() -> None:
        wanted = {"toolsListChanged": True, "taskIds": [tid, theirs, "apr_unknown"]}
        async with Stream(srv, key, "tasks-1", wanted, m=WITH) as mine, \
                Stream(srv, other, "tasks-2", {"taskIds": [tid]}, m=WITH) as spy:
            await mine.until(lambda f: len(_tasks(f, tid)) >= 1)
            ack = mine.frames[0]
            assert ack["method"] == "notifications/subscriptions/acknowledged", mine.frames
            # Only the caller's own task is honoured; another agent's id is dropped like an unknown one.
            assert ack["params"]["notifications"] == {"toolsListChanged": True, "taskIds": [tid]}, ack
            first = _tasks(mine.frames, tid)[0]
            assert first["status"] == "working" and first["_meta"][SUB_ID] == "tasks-1", first
            await _cli("approvals", "approve", tid, home=srv.home)
            await mine.until(lambda f: _tasks(f, tid)[-1]["status"] != "working")
            done = _tasks(mine.frames, tid)[-1]
            got = task_get(srv, key, tid)["result"]
            assert done["status"] == "completed" and done["result"]["isError"] is False, done
            assert {k: v for k, v in done.items() if k != "_meta"} == \
                {k: v for k, v in got.items() if k not in ("resultType", "_meta")}, (done, got)
            # The other agent asked for this task: its ack honours nothing and it hears nothing.
            await spy.until(lambda f: len(f) >= 1)
            assert spy.frames[0]["params"]["notifications"] == {}, spy.frames
            await _cli("approvals", "approve", theirs, home=srv.home)
            await asyncio.sleep(1)
        assert [f["method"] for f in spy.frames] == ["notifications/subscriptions/acknowledged"], spy.frames
        assert _tasks(mine.frames, theirs) == [], mine.frames
        # working (waiting), maybe working again (approved; running), completed: each frame a change.
        pushed = _tasks(mine.frames, tid)
        assert [t["status"] for t in pushed][::len(pushed) - 1] == ["working", "completed"], pushed
        assert {t["status"] for t in pushed[1:-1]} <= {"working"}, pushed
        assert all(a != b for a, b in zip(pushed, pushed[1:], strict=False)), pushed

    asyncio.run(go())


def test_cancelled_and_rejected_tasks_are_pushed_once(srv: Server) -> None:
    key = srv.agent("push-ends")
    cancel = tool(srv, key, "system.time")["result"]["taskId"]
    # Same capability and arguments would join the pending request: a second, distinct one.
    reject = tool(srv, key, "agent.approval", {"approval": "apr_other", "wait": 7})["result"]["taskId"]
    assert reject != cancel

    async def go() -> None:
        async with Stream(srv, key, 99, {"taskIds": [cancel, reject]}, m=WITH) as s:
            await s.until(lambda f: _tasks(f, cancel) and _tasks(f, reject))
            ack = await asyncio.to_thread(call, srv, key, "tasks/cancel", {"taskId": cancel}, WITH, cancel)
            assert "result" in ack, ack
            await _cli("approvals", "reject", reject, "--reason", "no", home=srv.home)
            await s.until(lambda f: _tasks(f, cancel)[-1]["status"] == "cancelled"
                          and _tasks(f, reject)[-1]["status"] == "failed")
            assert _tasks(s.frames, reject)[-1]["error"]["data"]["type"] == "ApprovalRejected", s.frames
            assert all(f["params"]["_meta"][SUB_ID] == 99 for f in s.frames), s.frames
            await asyncio.sleep(0.5)
        assert [t["status"] for t in _tasks(s.frames, cancel)] == ["working", "cancelled"], s.frames

    asyncio.run(go())


def test_a_finished_task_is_sent_once_right_after_the_ack(srv: Server) -> None:
    """A task that ended between `tools/call` and the listen is not missed."""
    key = srv.agent("push-late")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    cli_json("approvals", "reject", tid, home=srv.home)

    async def go() -> list[dict[str, Any]]:
        async with Stream(srv, key, "late", {"taskIds": [tid]}, m=WITH) as s:
            await s.until(lambda f: len(f) >= 2)
            await asyncio.sleep(0.5)
        return s.frames

    frames = asyncio.run(go())
    assert frames[0]["params"]["notifications"] == {"taskIds": [tid]}, frames
    assert [t["status"] for t in _tasks(frames, tid)] == ["failed"], frames


@pytest.mark.parametrize(("notifications", "m", "code"), [
    ({"taskIds": ["apr_x"]}, WITHOUT, -32021),
    ({"toolsListChanged": True, "taskIds": []}, WITHOUT, -32021),
    ({"taskIds": "apr_x"}, WITH, -32602),
    ({"taskIds": [5]}, WITH, -32602),
    ({"taskIds": [""]}, WITH, -32602),
    ({"taskIds": ["x" * 500]}, WITH, -32602),
    ({"taskIds": [f"apr_{i}" for i in range(300)]}, WITH, -32602),
    ({"taskIds": ["apr_x"]}, {**WITH, "io.modelcontextprotocol/clientCapabilities": {"extensions": []}}, -32602),
])
def test_bad_task_listens_are_refused_and_change_nothing(srv: Server, notifications: dict[str, Any],
                                                         m: dict[str, Any], code: int) -> None:
    key = srv.agent("push-bad")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    r = call(srv, key, "subscriptions/listen", {"notifications": notifications}, m)
    assert r.get("error", {}).get("code") == code, r
    if code == -32021:
        assert r["error"]["data"]["requiredCapabilities"] == {"extensions": {EXT: {}}}, r
    assert task_get(srv, key, tid)["result"]["status"] == "working"
    assert cli_json("approvals", "show", tid, home=srv.home)["status"] == "pending"


def test_a_listen_without_task_ids_needs_no_extension(srv: Server) -> None:
    key = srv.agent("push-plain")

    async def go() -> dict[str, Any]:
        async with Stream(srv, key, "plain", {"toolsListChanged": True}, m=WITHOUT) as s:
            await s.until(lambda f: len(f) >= 1)
        return s.frames[0]

    ack = asyncio.run(go())
    assert ack["params"]["notifications"] == {"toolsListChanged": True}, json.dumps(ack)


def test_a_revoked_agents_task_stream_ends_without_telling_it_more(srv: Server) -> None:
    key = srv.agent("push-revoked")
    tid = tool(srv, key, "system.time")["result"]["taskId"]

    async def go() -> list[dict[str, Any]]:
        async with Stream(srv, key, "rev", {"taskIds": [tid]}, m=WITH) as s:
            await s.until(lambda f: _tasks(f, tid))
            await _cli("agent", "revoke", "push-revoked", home=srv.home)
            await s.until(lambda f: "id" in f[-1])      # the stream's final result: it ended
        return s.frames

    frames = asyncio.run(go())
    assert [t["status"] for t in _tasks(frames, tid)] == ["working"], frames
    assert frames[-1]["id"] == "rev" and frames[-1]["result"]["_meta"][SUB_ID] == "rev", frames
    assert cli_json("approvals", "show", tid, home=srv.home)["status"] == "expired"


# -- the pure part ----------------------------------------------------------------------------
def test_requested_task_ids_are_checked_and_deduplicated() -> None:
    def f(**extra: Any) -> SubscriptionFilter:
        return SubscriptionFilter.model_validate({"toolsListChanged": True, **extra})

    assert listen.requested_task_ids(f()) is None
    assert listen.requested_task_ids(f(taskIds=["a", "b", "a"])) == ["a", "b"]
    for bad in ("a", [1], [""], ["x" * 129], [None], ["a"] * (listen.MAX_TASK_IDS + 1)):
        with pytest.raises(StockadeError):
            listen.requested_task_ids(f(taskIds=bad))
    ack = listen.honoured_filter(f(promptsListChanged=False, taskIds=["a", "b"]), ["a"])
    assert ack.model_dump(by_alias=True, exclude_none=True) == {"toolsListChanged": True, "taskIds": ["a"]}
    assert listen.honoured_filter(f(taskIds=["a"]), []).model_dump(by_alias=True, exclude_none=True) == \
        {"toolsListChanged": True}
    frame = listen.task_frame({"taskId": "a", "ttlMs": None}, {SUB_ID: 1}).model_dump(exclude_none=True)
    assert frame == {"method": "notifications/tasks", "params": {"taskId": "a", "ttlMs": None, "_meta": {SUB_ID: 1}}}
