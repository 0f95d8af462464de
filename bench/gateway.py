"""`stockade bench gateway`: system.time through the full pipeline (JSON-RPC and MCP Streamable
HTTP) against a bare MCP SDK server's no-op tool, side by side in the same run; then agent state
(`state.set`, `state.get`) through the same full pipeline: a set is a side-effect call (two audit
records, intent and outcome) plus a synced SQLite commit in stockade.db.

Both servers are separate processes on loopback, driven by the same client code one call at a
time, so the ratio is the per-call cost of stockade's pipeline (auth, schema, policy, audit
fsync, result shaping) over the SDK alone.

Upstream MCP servers (issue 20): one trivial tool (`_stdio_mcp.py` echo) through stockade next
to the same tool called directly: as a stdio server confined in its long-lived sandbox (root
only) against the SDK's stdio client, and as a url upstream already running on loopback against
the SDK's Streamable HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from _util import row
from stockade.core.volume import unmount_under

HERE = Path(__file__).resolve().parent
ANCHOR = "bare mcp SDK server, no-op tool with the same schemas"


def _wait_file(p: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.exists() and p.read_text().strip():
            return p.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError("server did not start")


async def _mcp_calls(url: str, headers: dict[str, str], tool: str, n: int,
                     args: dict[str, Any] | None = None) -> list[int]:
    samples = []
    async with Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers)),
                      mode="legacy") as c:
        for _ in range(max(5, n // 10)):  # warm-up
            await c.call_tool(tool, args or {})
        for _ in range(n):
            t = time.perf_counter_ns()
            r = await c.call_tool(tool, args or {})
            samples.append(time.perf_counter_ns() - t)
            assert not r.is_error
    return samples


def _cpu_s(pid: int) -> float:
    """A process's own CPU time so far (user + system, every thread; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rpc_calls(url: str, key: str, n: int, name: str = "system.time",
               args: dict[str, Any] | None = None) -> list[int]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke",
                       "params": {"name": name, "arguments": args or {}}}).encode()
    samples = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as c:
        for _ in range(max(5, n // 10)):
            c.post(url, content=body)
        for _ in range(n):
            t = time.perf_counter_ns()
            r = c.post(url, content=body)
            samples.append(time.perf_counter_ns() - t)
            assert "result" in r.json(), r.text
    return samples


# A small JSON document an agent might keep between sessions (~200 bytes as canonical JSON).
STATE_VALUE = {"task": "weekly report", "done": ["fetch", "summarise"], "next": "send", "attempts": 2,
               "notes": "the owner prefers bullet points; keep it under one page"}


def _state_rows(gw: str, auth: dict[str, str], key: str, n: int) -> list[tuple[str, list[int]]]:
    """state.set then state.get of one key, over MCP Streamable HTTP and JSON-RPC."""
    set_args = {"key": "bench/progress", "value": STATE_VALUE}
    get_args = {"key": "bench/progress"}
    return [
        ("mcp_streamable_http state.set (full pipeline, audited write)",
         asyncio.run(_mcp_calls(f"{gw}/mcp", auth, "state__set", n // 2, set_args))),
        ("mcp_streamable_http state.get (full pipeline)",
         asyncio.run(_mcp_calls(f"{gw}/mcp", auth, "state__get", n // 2, get_args))),
        ("jsonrpc state.set (full pipeline, audited write)",
         _rpc_calls(f"{gw}/rpc", key, n // 2, "state.set", set_args)),
        ("jsonrpc state.get (full pipeline)", _rpc_calls(f"{gw}/rpc", key, n // 2, "state.get", get_args)),
    ]


UPSTREAM = "benchup"
UP_ANCHOR = "the same MCP server over stdio, called directly with the SDK's stdio client"


HTTP_UPSTREAM = "benchhttp"
HTTP_ANCHOR = "the same MCP server over Streamable HTTP, called directly with the SDK's client"


def _upstream_config(stdio: bool, http_port: int) -> str:
    """upstream.yaml for the bench: _stdio_mcp.py run by this interpreter, which the long-lived
    sandbox sees through its venv, the Python it was made from and this directory (read-only)
    (with root only); and the same server already running over Streamable HTTP on `http_port`."""
    from stockade.upstream.config import runtime_dirs

    dirs = sorted({*runtime_dirs(sys.executable), str(HERE)})
    servers: dict[str, Any] = {HTTP_UPSTREAM: {"url": f"http://127.0.0.1:{http_port}/mcp"}}
    if stdio:
        servers[UPSTREAM] = {"command": sys.executable, "args": [str(HERE / "_stdio_mcp.py")],
                             "filesystem": [{"path": d} for d in dirs], "startup_timeout": 120}
    return json.dumps({"servers": servers})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not listen")


def _http_upstream_rows(gw: str, auth: dict[str, str], port: int, n: int) -> list[dict[str, Any]]:
    """A url upstream's trivial tool through stockade (MCP HTTP -> pipeline -> MCP HTTP session to
    the server) next to the same server's tool called directly over Streamable HTTP."""
    direct: list[int] = []
    ours: list[int] = []
    for _ in range(2):
        direct += asyncio.run(_mcp_calls(f"http://127.0.0.1:{port}/mcp", {}, "echo", n // 4, {"text": "hi"}))
        ours += asyncio.run(_mcp_calls(f"{gw}/mcp", auth, f"{HTTP_UPSTREAM}__echo", n // 4, {"text": "hi"}))
    per_s = 1e9 / (sum(ours) / len(ours))
    return [row(f"mcp_streamable_http {HTTP_UPSTREAM}.echo (url upstream on loopback, full pipeline)", ours,
                anchor=HTTP_ANCHOR, anchor_ns=direct, per_s=per_s)]


async def _stdio_calls(n: int) -> list[int]:
    """The anchor: the upstream's tool over stdio, no stockade (no sandbox, pipeline or HTTP)."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=[str(HERE / "_stdio_mcp.py")])
    samples = []
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        for _ in range(max(5, n // 10)):
            await s.call_tool("echo", {"text": "hi"})
        for _ in range(n):
            t = time.perf_counter_ns()
            res = await s.call_tool("echo", {"text": "hi"})
            samples.append(time.perf_counter_ns() - t)
            assert not res.is_error
    return samples


def _upstream_rows(gw: str, auth: dict[str, str], n: int) -> list[dict[str, Any]]:
    """An upstream server's trivial tool through stockade (MCP HTTP -> pipeline -> the server in
    its sandbox over stdio) next to the same tool called directly over stdio."""
    direct: list[int] = []
    ours: list[int] = []
    for _ in range(2):
        direct += asyncio.run(_stdio_calls(n // 4))
        ours += asyncio.run(_mcp_calls(f"{gw}/mcp", auth, f"{UPSTREAM}__echo", n // 4, {"text": "hi"}))
    per_s = 1e9 / (sum(ours) / len(ours))
    return [row(f"mcp_streamable_http {UPSTREAM}.echo (upstream stdio server, full pipeline, sandboxed)", ours,
                anchor=UP_ANCHOR, anchor_ns=direct, per_s=per_s)]


def run(quick: bool = False) -> dict[str, Any]:
    n = 100 if quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-gw-"))
    home = tmp / "home"
    env = {**os.environ}
    py = [sys.executable, "-m", "stockade"]
    subprocess.run([*py, "init", "--home", str(home), "--policy", "open"], check=True, capture_output=True)
    upstream = os.geteuid() == 0          # the long-lived sandbox needs root (namespaces, cgroups)
    http_port = _free_port()
    http_up = subprocess.Popen([sys.executable, str(HERE / "_stdio_mcp.py"), str(http_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(http_port, http_up)         # before the gateway: it lists the server's tools at start
    (home / "upstream.yaml").write_text(_upstream_config(upstream, http_port))
    key = json.loads(subprocess.run([*py, "agent", "create", "bench", "--json", "--home", str(home)], check=True,
                                    capture_output=True, text=True).stdout)["key"]
    ours = subprocess.Popen([*py, "serve", "--home", str(home), "--port", "0", "--dashboard-port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    portfile = tmp / "bare.port"
    bare = subprocess.Popen([sys.executable, str(HERE / "_bare_mcp.py"), str(portfile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ports = json.loads(_wait_file(home / "run" / "ports.json", ours))
        bare_port = int(_wait_file(portfile, bare))
        gw = f"http://127.0.0.1:{ports['gateway']}"
        auth = {"Authorization": f"Bearer {key}"}
        # Interleave the two so machine noise hits both alike.
        anchor: list[int] = []
        mcp_ours: list[int] = []
        rpc: list[int] = []
        rpc_cpu = 0.0   # the gateway's own CPU over the JSON-RPC rounds, warm-up calls included (see the divisor)
        for _ in range(2):
            anchor += asyncio.run(_mcp_calls(f"http://127.0.0.1:{bare_port}/mcp", {}, "noop", n // 2))
            mcp_ours += asyncio.run(_mcp_calls(f"{gw}/mcp", auth, "system__time", n // 2))
            c0 = _cpu_s(ours.pid)
            rpc += _rpc_calls(f"{gw}/rpc", key, n // 2)
            rpc_cpu += _cpu_s(ours.pid) - c0
        state = _state_rows(gw, auth, key, n)
        up = (_upstream_rows(gw, auth, n) if upstream else []) + _http_upstream_rows(gw, auth, http_port, n)
        per_s = lambda s: 1e9 / (sum(s) / len(s))  # noqa: E731 - sequential calls/s
        return {"bench": "gateway", "results": [
            row("mcp_streamable_http system.time (full pipeline)", mcp_ours, anchor=ANCHOR,
                anchor_ns=anchor, per_s=per_s(mcp_ours)),
            row("jsonrpc system.time (full pipeline)", rpc, anchor=ANCHOR,
                anchor_ns=anchor, per_s=per_s(rpc),
                gateway_cpu_us_per_call=round(rpc_cpu / (len(rpc) + 2 * max(5, n // 20)) * 1e6, 1)),
            *(row(case, s, anchor=ANCHOR, anchor_ns=anchor, per_s=per_s(s)) for case, s in state),
            *up,
        ]}
    finally:
        for p in (ours, bare, http_up):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
