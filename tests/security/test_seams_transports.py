"""Issue 13 against a real gateway (`stockade serve` subprocess), on every transport.

- item 1/6: hostile documents (600 and 410 deep, NaN, 1e999, lone surrogates) are refused as
  structured `InvalidInput` on JSON-RPC, MCP HTTP (both eras) and MCP WebSocket, each refusal
  has its audit record, and the log still verifies;
- item 5: a keyless request gets 401 before its body is read; hundreds of keyless slow
  connections leave memory bounded while an agent is served;
- item 4: a minute of hostile traffic from one agent grows the log by a bounded amount while
  another agent keeps working;
- item 6: a hypothesis fuzz over the transports never gets a 5xx or a dead server, and every
  authenticated call that was not throttled has its audit record.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import Server, cli_quick, start_server
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.xdist_group("security-gateway")

HDR = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("sec") / "home"
    cli_quick("init", home=home)
    s = start_server(home)
    try:
        yield s
    finally:
        s.stop()


def audit_records(server: Server) -> list[dict[str, Any]]:
    # the CLI is a means here (in this process: no interpreter start per read)
    out = cli_quick("audit", "export", "--format", "jsonl", home=server.home).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


HOSTILE = {"deep600": nested(600), "deep410": nested(410), "nan": "NaN", "inf": "1e999", "neg-inf": "-Infinity",
           "surrogate": '"\\ud800"'}


def tool_call(args_json: str, rid: int = 1) -> str:
    return ('{"jsonrpc":"2.0","id":' + str(rid) + ',"method":"tools/call","params":{"name":"system__time",'
            '"arguments":{"x":' + args_json + '}}}')


def rpc_call(args_json: str, rid: int = 1) -> str:
    return ('{"jsonrpc":"2.0","id":' + str(rid) + ',"method":"capabilities.invoke","params":{"name":"system.time",'
            '"arguments":{"x":' + args_json + '}}}')


def send(server: Server, transport: str, key: str, body: str) -> dict[str, Any]:
    """One request on `transport`; returns the JSON-RPC error object (asserting no 5xx)."""
    h = {"Authorization": f"Bearer {key}"}
    if transport == "rpc":
        r = httpx.post(f"{server.url}/rpc", content=body.encode(), headers=h, timeout=30)
    else:
        version = {"mcp-2025": "2025-11-25", "mcp-2026": "2026-07-28"}[transport]
        r = httpx.post(f"{server.url}/mcp", content=body.encode(), timeout=30,
                       headers={**h, **HDR, "Mcp-Protocol-Version": version})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text
    return r.json().get("error") or {}


@pytest.mark.parametrize("transport", ["rpc", "mcp-2025", "mcp-2026", "ws"])
def test_hostile_documents_are_refused_and_audited_on_every_transport(server: Server, transport: str) -> None:
    agent = f"edge-{transport}"
    key = server.agent(agent)
    if transport == "ws":
        with ws_connect(server.url.replace("http", "ws") + "/mcp/ws",
                        additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            for i, doc in enumerate(HOSTILE.values()):
                ws.send(tool_call(doc, i))
                e = json.loads(ws.recv(10))["error"]
                assert e["data"]["type"] == "InvalidInput", e
    else:
        for doc in HOSTILE.values():
            e = send(server, transport, key, (rpc_call if transport == "rpc" else tool_call)(doc))
            assert e["data"]["type"] == "InvalidInput", e
    refused = [r for r in audit_records(server) if r.get("kind") == "request.refused" and r.get("agent") == agent]
    assert len(refused) == len(HOSTILE)
    assert all(len(r["body"]["prefix"]) <= 4096 and len(r["body"]["sha256"]) == 64 for r in refused)
    assert server.invoke(key, "system.time").get("result")
    v = cli_quick("audit", "verify", "--json", home=server.home, check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def _raw(server: Server, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.ports["gateway"]), timeout=10)
    s.sendall(head)
    return s


@pytest.mark.parametrize("path", ["/rpc", "/mcp"])
def test_keyless_request_is_refused_before_its_body(server: Server, path: str) -> None:
    """Headers promise 4 MB and no body follows: the answer is 401 at once, not a wait for the body."""
    s = _raw(server, (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Accept: application/json, text/event-stream\r\nContent-Length: 4000000\r\n\r\n").encode())
    s.settimeout(5)
    try:
        got = s.recv(4096)
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 401"), got[:100]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_hundreds_of_keyless_slow_connections_keep_memory_bounded(server: Server) -> None:
    key = server.agent("patient")
    assert server.invoke(key, "system.time").get("result")
    before = _rss_kib(server.proc.pid)
    socks: list[socket.socket] = []
    for i in range(300):
        if i % 3 == 0:    # a head that never ends
            head = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 2000
        elif i % 3 == 1:  # a keyless body that trickles
            head = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n" + b"[" * 1000
        else:             # a connection that never says anything
            head = b""
        try:
            socks.append(_raw(server, head))
        except OSError:
            break
    try:
        for _ in range(3):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"a" * 100)
            assert server.invoke(key, "system.time").get("result"), "a legitimate agent must still be served"
            time.sleep(1)
        grown = _rss_kib(server.proc.pid) - before
        assert grown < 64 * 1024, f"RSS grew by {grown} KiB with {len(socks)} keyless slow connections"
        # Unfinished heads are cut off after the header deadline (10 s): poll for it, up to 30 s.
        heads, closed = set(socks[::3]), 0
        deadline = time.monotonic() + 30
        while closed < len(socks[::3]) * 9 // 10 and time.monotonic() < deadline:
            time.sleep(0.5)
            for s in list(heads):
                s.settimeout(0.01)
                try:
                    gone = s.recv(100) == b""
                except ConnectionResetError:
                    gone = True
                except (TimeoutError, OSError):
                    continue
                if gone:
                    heads.discard(s)
                    closed += 1
        assert closed >= len(socks[::3]) * 9 // 10
        assert server.invoke(key, "system.time").get("result")
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_a_minute_of_hostile_traffic_costs_a_bounded_amount_of_log(server: Server) -> None:
    hostile, bystander = server.agent("hostile"), server.agent("bystander")
    audit_dir = server.home / "audit"

    def log_bytes() -> int:
        return sum(p.stat().st_size for p in audit_dir.glob("*") if p.is_file() and p.suffix != ".db"
                   and not p.name.startswith("index"))

    start = log_bytes()
    # Invalid calls whose arguments weigh 256 KiB each, 15 per batch (under the body cap).
    one = {"jsonrpc": "2.0", "method": "capabilities.invoke",
           "params": {"name": "system.time", "arguments": {"junk": "x" * (256 << 10)}}}
    body = json.dumps([{**one, "id": i} for i in range(15)]).encode()
    stop = time.monotonic() + 60
    sent = [0]

    def flood() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {hostile}"}, timeout=30) as c:
            while time.monotonic() < stop:
                r = c.post(f"{server.url}/rpc", content=body)
                assert r.status_code < 500
                sent[0] += 15

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for t in threads:
        t.start()
    ok = 0
    while time.monotonic() < stop:
        assert server.invoke(bystander, "system.time").get("result"), "the other agent must keep working"
        ok += 1
        time.sleep(1)
    for t in threads:
        t.join()
    grown = log_bytes() - start
    assert sent[0] > 1000 and ok > 30
    # Without the bounds this is 15 × 256 KiB per request; with them, a few hundred small records.
    assert grown < 2 << 20, f"the audit log grew by {grown} bytes for {sent[0]} hostile calls"


# -- item 6: the fuzz over every transport ----------------------------------------------------
leaf = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10)
        | st.sampled_from(["\ud800", "x\udfffy"]))
values = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                      max_leaves=10)


def _encode(v: Any, depth: int) -> str:
    text = json.dumps(v, allow_nan=True, ensure_ascii=True)
    return "[" * depth + text + "]" * depth


FUZZ_SEEN: dict[str, int] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(transport=st.sampled_from(["rpc", "mcp-2025", "mcp-2026", "ws"]), args=values,
       depth=st.sampled_from([0, 0, 1, 70, 600]), name=st.sampled_from(["system.time", "no.such", "agent.whoami"]))
def test_fuzz_every_transport_structured_and_audited(server: Server, transport: str, args: Any, depth: int,
                                                     name: str) -> None:
    agent = f"fuzz-{transport}"
    key = server.agent(agent)
    doc = _encode({"a": args} if depth == 0 else args, depth)
    if transport == "ws":
        with ws_connect(server.url.replace("http", "ws") + "/mcp/ws",
                        additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}}}))
            json.loads(ws.recv(10))
            ws.send('{"jsonrpc":"2.0","method":"notifications/initialized"}')
            ws.send(tool_call(doc).replace("system__time", name.replace(".", "__")))
            reply = json.loads(ws.recv(10))
            err = reply.get("error") or {}
            if "result" in reply and reply["result"].get("isError"):
                err = {"data": json.loads(reply["result"]["content"][0]["text"])}
    else:
        body = (rpc_call(doc) if transport == "rpc" else tool_call(doc)).replace(
            "system.time" if transport == "rpc" else "system__time",
            name if transport == "rpc" else name.replace(".", "__"))
        err = send(server, transport, key, body)
    etype = (err.get("data") or {}).get("type")
    if etype != "RateLimited" or (err.get("data") or {}).get("rule") != "failure-cooldown":
        FUZZ_SEEN[agent] = FUZZ_SEEN.get(agent, 0) + 1
    # The server is alive for another agent, whatever this one did.
    assert server.invoke(server.agent("fuzz-witness"), "system.time").get("result")


def test_fuzz_left_an_audit_record_per_call(server: Server) -> None:
    """Runs after the fuzz (same module, in order): every call that was not throttled is in the log."""
    if not FUZZ_SEEN:
        pytest.skip("the fuzz test did not run in this process")
    recs = audit_records(server)
    for agent, n in FUZZ_SEEN.items():
        mine = [r for r in recs if r.get("agent") == agent and r.get("kind") in (None, "call", "request.refused")
                and r.get("phase") != "decision"]
        assert len(mine) >= n, (agent, len(mine), n)
    v = cli_quick("audit", "verify", "--json", home=server.home, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
