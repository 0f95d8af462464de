"""`subscriptions/listen` for stateless 2026-07-28 clients (issue 19, "Live lists"), through a real
gateway: acknowledged first, every frame carries the subscription id, only the requested kinds; and
the `mcp` SDK's own listen client hears a policy change.

Streams are read in the test's event loop and closed by the test before the gateway stops (no
reader thread left to meet a connection cut at shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.subscriptions import ToolsListChanged
from tests.conftest import Server, run_cli, start_server
from tests.policy.test_gateway_policy import ORG, write_org

from stockade.gateway import listen

pytestmark = pytest.mark.xdist_group("listen")
SUB_ID = "io.modelcontextprotocol/subscriptionId"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}
BASE = ORG.replace("tier: blocked, reason: health is private here", "tier: autonomous")
HIDDEN = BASE.replace("{id: t-auto, capability: system.time, tier: autonomous}",
                      "{id: t-auto, capability: system.time, tier: blocked}")


class Stream:
    """One raw `subscriptions/listen` stream: its frames (JSON objects) collect in `frames` while
    the block runs; leaving the block closes the stream from the client side."""

    def __init__(self, server: Server, key: str, rid: str | int, notifications: dict[str, Any],
                 m: dict[str, Any] = META) -> None:
        self.body = {"jsonrpc": "2.0", "id": rid, "method": "subscriptions/listen",
                     "params": {"notifications": notifications, "_meta": m}}
        self.url = f"{server.url}/mcp"
        self.headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
                        "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "subscriptions/listen"}
        self.frames: list[dict[str, Any]] = []
        self.status = 0

    async def __aenter__(self) -> Stream:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60, read=None))
        self._response = self._client.stream("POST", self.url, json=self.body, headers=self.headers)
        r = await self._response.__aenter__()
        self.status = r.status_code
        self._reader = asyncio.create_task(self._read(r))
        return self

    async def _read(self, r: httpx.Response) -> None:
        if r.headers.get("content-type", "").startswith("application/json"):   # an error, not a stream
            self.frames.append(json.loads(await r.aread()))
            return
        async for line in r.aiter_lines():
            if line.startswith("data:") and line[5:].strip():
                self.frames.append(json.loads(line[5:]))

    async def until(self, pred: Callable[[list[dict[str, Any]]], Any], seconds: float = 30) -> None:
        """Waits (polling) until `pred(frames)` holds; fails with the frames seen otherwise."""
        deadline = time.monotonic() + seconds
        while not pred(self.frames):
            assert time.monotonic() < deadline and not self._reader.done(), self.frames
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._response.__aexit__(None, None, None)
        await self._client.aclose()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("listen") / "home"
    run_cli("init", home=home)
    write_org(home, BASE)
    s = start_server(home)
    yield s
    s.stop()


def test_listen_streams_are_acknowledged_stamped_and_filtered(srv: Server) -> None:
    key = srv.agent("lis")

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with Stream(srv, key, "sub-tools", {"toolsListChanged": True}) as tools, \
                Stream(srv, key, "sub-prompts", {"promptsListChanged": True}) as prompts:
            assert tools.status == prompts.status == 200
            await tools.until(lambda f: f)
            await prompts.until(lambda f: f)
            # The policy hides a capability: the tools listener is told, the prompts listener is not.
            write_org(srv.home, HIDDEN)
            await tools.until(lambda f: len(f) > 1)
            await asyncio.sleep(1)
            write_org(srv.home, BASE)
            await tools.until(lambda f: len(f) > 2)
        return tools.frames, prompts.frames

    tools, prompts = asyncio.run(go())
    for frames, rid in ((tools, "sub-tools"), (prompts, "sub-prompts")):
        assert frames[0]["method"] == "notifications/subscriptions/acknowledged", frames
        assert all(f["params"]["_meta"][SUB_ID] == rid for f in frames), frames
    assert tools[0]["params"]["notifications"] == {"toolsListChanged": True}, tools[0]
    assert {f["method"] for f in tools[1:]} == {"notifications/tools/list_changed"}, tools
    assert [f["method"] for f in prompts] == ["notifications/subscriptions/acknowledged"], prompts


def test_a_revoked_agent_hears_no_list_change(srv: Server) -> None:
    """Every frame re-checks the key, not only task frames: after `agent revoke` a policy change
    ends the stream (its final result) instead of reaching the revoked agent."""
    key, witness_key = srv.agent("lis-revoked"), srv.agent("lis-witness")

    async def go() -> list[dict[str, Any]]:
        async with Stream(srv, key, "sub-rev", {"toolsListChanged": True}) as s, \
                Stream(srv, witness_key, "sub-wit", {"toolsListChanged": True}) as witness:
            await s.until(lambda f: f)
            await witness.until(lambda f: f)
            run_cli("agent", "revoke", "lis-revoked", home=srv.home)
            write_org(srv.home, HIDDEN)
            await s.until(lambda f: "id" in f[-1])      # the stream's final result: it ended
            await witness.until(lambda f: len(f) > 1)   # the change was announced (to the live agent)
            await asyncio.sleep(1)
            write_org(srv.home, BASE)                   # restored, and heard, before the next test
            await witness.until(lambda f: len(f) > 2)
        return s.frames

    frames = asyncio.run(go())
    assert [f.get("method") for f in frames[:-1]] == ["notifications/subscriptions/acknowledged"], frames
    assert frames[-1]["id"] == "sub-rev", frames


def test_the_sdk_listen_client_hears_a_policy_change(srv: Server) -> None:
    key = srv.agent("lis-sdk")
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})

    async def go() -> tuple[Any, bool, bool]:
        async with Client(streamable_http_client(f"{srv.url}/mcp", http_client=http), mode="2026-07-28") as c:
            before = {t.name for t in (await c.list_tools()).tools}
            async with c.listen(tools_list_changed=True) as sub:
                honored = sub.honored
                write_org(srv.home, HIDDEN)
                with anyio.fail_after(30):
                    event = await sub.__anext__()
            after = {t.name for t in (await c.list_tools()).tools}
            write_org(srv.home, BASE)
        return honored, isinstance(event, ToolsListChanged), "system__time" in before and "system__time" not in after

    honored, heard, hidden = asyncio.run(go())
    assert honored.tools_list_changed is True and not honored.prompts_list_changed, honored
    assert heard and hidden


def test_one_agent_cannot_take_every_listen_slot(srv: Server) -> None:
    hog, other = srv.agent("lis-hog"), srv.agent("lis-other")

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(Stream(srv, hog, f"hog-{i}", {"toolsListChanged": True}))
                       for i in range(listen.MAX_STREAMS_PER_AGENT)]
            for s in streams:
                await s.until(lambda f: f)
            async with Stream(srv, hog, "hog-over", {"toolsListChanged": True}) as over, \
                    Stream(srv, other, "other-1", {"toolsListChanged": True}) as fine:
                await over.until(lambda f: f)
                await fine.until(lambda f: f)
            return over.frames[0], fine.frames

    refused, fine = asyncio.run(go())
    assert refused["id"] == "hog-over" and refused["error"]["code"] == -32000, refused
    assert refused["error"]["data"]["type"] == "RateLimited", refused
    assert refused["error"]["data"]["rule"] == "listen-streams", refused
    assert fine[0]["method"] == "notifications/subscriptions/acknowledged", fine
