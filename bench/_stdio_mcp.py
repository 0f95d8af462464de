"""Upstream for `stockade bench gateway`: an MCP SDK server over stdio with one trivial read-only
tool. The bench calls it directly (the SDK's stdio client) and through stockade (as the upstream
server `benchup`, confined in its long-lived sandbox). Run as `python bench/_stdio_mcp.py`; with a
port argument it serves Streamable HTTP instead (the url upstream `benchhttp`).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("bench-upstream")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:     # PORT: the same server over Streamable HTTP on loopback (a url upstream)
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    else:
        server.run("stdio")
