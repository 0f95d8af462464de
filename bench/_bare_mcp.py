"""Anchor for `stockade bench gateway`: a bare MCP SDK server with one no-op tool.

Same SDK, same session manager, same uvicorn settings as the gateway; no auth, no policy, no
audit. Run as `python bench/_bare_mcp.py PORTFILE`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route

# The same contract as stockade's system.time (so both sides pay the same schema and
# serialisation costs in client and SDK), but nothing behind it: no auth, policy or audit.
INPUT = {"type": "object", "properties": {}, "additionalProperties": False}
OUTPUT = {"type": "object", "required": ["utc", "unix", "unix_ms"],
          "properties": {"utc": {"type": "string"}, "unix": {"type": "integer"}, "unix_ms": {"type": "integer"}}}
RESULT = {"utc": "2026-01-01T00:00:00.000Z", "unix": 1767225600, "unix_ms": 1767225600000}


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="noop", input_schema=INPUT, output_schema=OUTPUT)])


async def call_tool(ctx: Any, params: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(RESULT))],
                                structured_content=RESULT)


def main() -> None:
    server = Server("bare", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(app=server, security_settings=None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        async with manager.run():
            yield

    class Endpoint:  # an ASGI app (a bare function would be treated as a request handler)
        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            await manager.handle_request(scope, receive, send)

    app = Starlette(routes=[Route("/mcp", Endpoint(), methods=["GET", "POST", "DELETE"])],
                    lifespan=lifespan)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    with open(sys.argv[1], "w") as f:
        f.write(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
