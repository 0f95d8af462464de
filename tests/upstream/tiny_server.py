"""The smallest stdio MCP server: JSON-RPC lines by hand, the standard library only, so it starts
in milliseconds under the system Python (`/usr/bin/python3 -I -S tiny_server.py`) where the
tests only need *a* server to be running (crash leftovers), not an SDK's behaviour.

One read-only tool, `ping`, answers `pong`.
"""

from __future__ import annotations

import json
import sys

TOOLS = [{"name": "ping", "description": "Answer pong.", "annotations": {"readOnlyHint": True},
          "inputSchema": {"type": "object", "properties": {}}}]


def answer(method: str, params: dict) -> dict:
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
                "serverInfo": {"name": "tiny", "version": "1"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call" and params.get("name") == "ping":
        return {"content": [{"type": "text", "text": "pong"}], "isError": False}
    if method == "ping":
        return {}
    raise LookupError(method)


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue                        # notifications and stray responses
        try:
            out = {"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg["method"], msg.get("params") or {})}
        except LookupError:
            out = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "method not found"}}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
