"""A Streamable HTTP MCP server already running on loopback (the `url` upstream of the tests),
built with the `mcp` SDK's MCPServer and run by the test servers' own Python, outside stockade.

    python http_server.py PORT

`echo` and `peek` are annotated read-only; `note` writes (kept in memory); `auth` answers the Authorization
header it was sent, so a test sees what stockade disclosed to this server (and that the agent
gets it back redacted); `big` answers `size` bytes.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("httpnotes")
NOTES: list[str] = []


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def echo(text: str) -> str:
    """Answer the text."""
    return text


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def peek() -> str:
    """How many notes there are (read-only; no policy rule names it in the tests)."""
    return str(len(NOTES))


@server.tool()
def note(text: str) -> str:
    """Keep a note (a side effect)."""
    NOTES.append(text)
    return f"noted {len(NOTES)}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def auth(ctx: Context) -> str:
    """The Authorization header this request carried."""
    headers = ctx.headers or {}
    return str(headers.get("authorization", "(none)"))


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called `name` (it answers 'grown') and tell the client the list changed."""
    server.add_tool(lambda: "grown", name=name, description="added at run time")
    await ctx.session.send_tool_list_changed()
    return "added"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def big(size: int) -> str:
    """A text of `size` bytes (the output bound)."""
    return "x" * size


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
