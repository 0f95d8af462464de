"""The `mcp` SDK as a Tasks client (issue 19): the SDK ships no Tasks extension, but its public
extension API (`ClientExtension` + `ResultClaim`) lets a client declare
`io.modelcontextprotocol/tasks`, accept a `resultType: "task"` result and finish it by polling
`tasks/get` (with the `Mcp-Name` routing header the SDK sets from `name_param`). Against a real
`stockade serve`: `call_tool` on a call that waits for the owner returns the real result once the
owner approves, and a rejection comes back as the stockade error; a client without the extension
is unchanged."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from pydantic import ConfigDict
from tests.conftest import Server, cli_json, start_server
from tests.gateway.test_tasks import EXT, _task_home

pytestmark = pytest.mark.xdist_group("tasks-gateway")


class CreateTaskResult(types.Result):
    model_config = ConfigDict(**types.Result.model_config, extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str


class TaskParams(types.RequestParams):
    task_id: str


class GetTask(types.Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams
    name_param = "taskId"


class DetailedTask(types.Result):
    model_config = ConfigDict(**types.Result.model_config, extra="allow")
    task_id: str
    status: str


class Tasks(ClientExtension):
    """Declares the extension and resolves a task handle into the call's ordinary result."""

    identifier = EXT

    def __init__(self) -> None:
        self.handles: list[CreateTaskResult] = []
        self.polls = 0

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreateTaskResult, resolve=self._resolve)]

    async def _resolve(self, handle: CreateTaskResult, ctx: ClaimContext) -> types.CallToolResult:
        self.handles.append(handle)
        with anyio.fail_after(60):
            while True:
                task = await ctx.session.send_request(GetTask(params=TaskParams(task_id=handle.task_id)), DetailedTask)
                self.polls += 1
                extra = task.model_extra or {}
                if task.status == "completed":
                    return types.CallToolResult.model_validate(extra["result"], by_name=False)
                if task.status in ("failed", "cancelled"):
                    body = extra.get("error", {}).get("data") or {"type": task.status}
                    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(body))],
                                                is_error=True)
                await anyio.sleep(0.2)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_server(_task_home(tmp_path_factory.mktemp("tasks-sdk")))
    yield s
    s.stop()


def _client(srv: Server, key: str, ext: ClientExtension | None) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{srv.url}/mcp", http_client=http), mode="2026-07-28",
                  extensions=[ext] if ext is not None else None)


async def _decide_when_pending(srv: Server, agent: str, verb: str) -> None:
    """The owner: waits for the agent's approval to appear, then decides it."""
    with anyio.fail_after(60):
        while True:
            listed = await asyncio.to_thread(cli_json, "approvals", "list", home=srv.home)
            mine = [a for a in listed["approvals"] if a["agent"] == agent and a["status"] == "pending"]
            if mine:
                await asyncio.to_thread(cli_json, "approvals", verb, mine[0]["approval"], home=srv.home)
                return
            await anyio.sleep(0.2)


def test_the_sdk_resolves_an_approved_task_into_the_real_result(srv: Server) -> None:
    key = srv.agent("sdk-approved")
    ext = Tasks()

    async def go() -> types.CallToolResult:
        async with _client(srv, key, ext) as c, anyio.create_task_group() as tg:
            tg.start_soon(_decide_when_pending, srv, "sdk-approved", "approve")
            return await c.call_tool("system__time", {})

    r = asyncio.run(go())
    assert not r.is_error and isinstance((r.structured_content or {}).get("unix"), int), r
    assert [h.status for h in ext.handles] == ["working"] and ext.polls >= 1, ext.handles
    assert cli_json("approvals", "show", ext.handles[0].task_id, home=srv.home)["status"] == "executed"


def test_the_sdk_sees_a_rejection_as_the_stockade_error(srv: Server) -> None:
    key = srv.agent("sdk-rejected")
    ext = Tasks()

    async def go() -> types.CallToolResult:
        async with _client(srv, key, ext) as c, anyio.create_task_group() as tg:
            tg.start_soon(_decide_when_pending, srv, "sdk-rejected", "reject")
            return await c.call_tool("system__time", {})

    r = asyncio.run(go())
    assert r.is_error and json.loads(r.content[0].text)["type"] == "ApprovalRejected", r  # type: ignore[union-attr]


def test_an_sdk_client_without_the_extension_is_held_as_before(srv: Server) -> None:
    key = srv.agent("sdk-plain")

    async def go() -> types.CallToolResult:
        async with _client(srv, key, None) as c:
            return await c.call_tool("system__time", {})

    r = asyncio.run(go())
    assert r.is_error and json.loads(r.content[0].text)["type"] == "ApprovalPending", r  # type: ignore[union-attr]
