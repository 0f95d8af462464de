"""A small MCP server the confinement tests run as an upstream (with the `mcp` SDK of the test
servers' venv): arbitrary code inside the long-lived sandbox, asked to do what a hostile server
would try. Each tool reports what happened instead of raising, so the test sees the kernel's answer.
"""

from __future__ import annotations

import os
import socket
import time

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("probe")


@server.tool()
def connect(host: str, port: int) -> str:
    """TCP connect to host:port; 'connected' or the error."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"
    finally:
        s.close()


@server.tool()
def read(path: str) -> str:
    """Read a file's first bytes; 'read:<n>' or the error."""
    try:
        with open(path, "rb") as f:
            return f"read:{len(f.read(4096))}"
    except OSError as e:
        return f"error: {type(e).__name__}: {e}"


@server.tool()
def whoami() -> dict:
    """uid, pid, hostname, environment names and what / holds, as the server sees them."""
    return {"uid": os.getuid(), "pid": os.getpid(), "hostname": socket.gethostname(),
            "env": sorted(os.environ), "root": sorted(os.listdir("/")),
            "secret": os.environ.get("PROBE_TOKEN", "")}


@server.tool()
def sleep(seconds: float) -> str:
    """Sleep, then answer (a call to kill the server in the middle of)."""
    time.sleep(seconds)
    return "slept"


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Add a tool called `name` (it answers 'grown') and tell the client the list changed."""
    server.add_tool(lambda: "grown", name=name, description="added at run time")
    await ctx.session.send_tool_list_changed()
    return "added"


@server.tool()
def big(size: int) -> str:
    """A text of `size` bytes (the output bound)."""
    return "x" * size


if __name__ == "__main__":
    server.run("stdio")
