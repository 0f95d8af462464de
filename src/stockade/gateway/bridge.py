"""`stockade connect`: a stdio MCP server that forwards to the gateway's `/mcp`.

For clients that only speak stdio (Claude Code, Claude Desktop, Codex). It holds no policy of
its own: every list and call goes to the gateway with the agent's key, so the gateway's
pipeline stays the one place decisions are made.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

from stockade import __version__


async def run_bridge(url: str, key: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as upstream:
        info = upstream.server_info

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return await upstream.list_tools()

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            return await upstream.call_tool(params.name, dict(params.arguments or {}))

        server: Server[Any] = Server("stockade", version=info.version if info else __version__,
                                     instructions=getattr(upstream, "instructions", None),
                                     on_list_tools=list_tools, on_call_tool=call_tool)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options(NotificationOptions()))
