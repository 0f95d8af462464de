"""Failed authentication against a real gateway, on every transport (issue 13, "Failed authentication").

25 bad keys used to be answered 25 times with 401, checked every time, and left no trace. Now:
a source that spends its failure budget is refused (429, structured `RateLimited`) without its
key being looked up, while agents that already worked from there keep working; the log holds a
bounded description of the failures (never the keys) and a count per window; the owner gets one
critical `auth.burst` event per window.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import Server, cli_quick, quick_json, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from stockade.core.home import Home

pytestmark = pytest.mark.xdist_group("security-auth")

HDR = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
LIST_2026 = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {}}}}


def bad_keys(n: int, revoked: str) -> list[str | None]:
    """Missing, malformed, well-formed unknown and a revoked agent's key, in turn."""
    shapes: list[str | None] = [None, "stk_short", "not-a-key-at-all", revoked]
    out: list[str | None] = []
    for i in range(n):
        out.append(shapes[i % 4] if i % 5 else "stk_" + secrets.token_urlsafe(32)[:43])
    return out


def attempt(server: Server, transport: str, key: str | None) -> tuple[int, dict[str, Any]]:
    """One authenticated request on `transport`: (HTTP status or WS close code, JSON-RPC error or {})."""
    h = {"Authorization": f"Bearer {key}"} if key else {}
    if transport == "rpc":
        r = httpx.post(f"{server.url}/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "capabilities.list"},
                       headers=h, timeout=30)
        return r.status_code, (r.json().get("error") or {})
    if transport in ("mcp-2025", "mcp-2026"):
        body = INIT if transport == "mcp-2025" else LIST_2026
        extra = {} if transport == "mcp-2025" else {"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
        r = httpx.post(f"{server.url}/mcp", json=body, headers={**h, **HDR, **extra}, timeout=30)
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        return r.status_code, (doc.get("error") or {})
    with ws_connect(server.url.replace("http", "ws") + "/mcp/ws", additional_headers=h) as ws:
        if key is None:
            ws.send(json.dumps({"type": "auth", "token": "nope"}))
        try:   # a refusal comes at once; an accepted connection waits for the client to speak
            first = json.loads(ws.recv(5))
        except TimeoutError:
            return 101, {}
        try:
            ws.recv(5)
        except ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else 0), first["error"]
        raise AssertionError("the gateway kept a connection open after refusing its credential")


def audit_records(server: Server) -> list[dict[str, Any]]:
    # the CLI is a means here: in this process (no interpreter start per read)
    out = cli_quick("audit", "export", "--format", "jsonl", home=server.home).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


BURST = 10


@pytest.fixture
def gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A gateway whose failure bucket refills once an hour: no token comes back during a test.
    Fresh for every test: the throttle counts per source address (every test is 127.0.0.1), and
    the burst test stops it to read the window's count."""
    home = tmp_path / "home"
    cli_quick("init", home=home)
    cfg = yaml.safe_load((home / "stockade.yaml").read_text()) or {}
    cfg.setdefault("gateway", {}).update({"auth_failure_burst": BURST, "auth_failure_refill_seconds": 3600})
    (home / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    s = start_server(home)
    try:
        yield s
    finally:
        s.stop()


def _revoked_key(server: Server) -> str:
    key = server.agent("gone")
    quick_json("agent", "revoke", "gone", home=server.home)
    return key


@pytest.mark.parametrize("transport", ["rpc", "mcp-2025", "mcp-2026", "ws"])
def test_bad_keys_are_throttled_audited_and_alerted_on_every_transport(gw: Server, transport: str) -> None:
    steady = gw.agent("steady")
    assert gw.invoke(steady, "system.time").get("result")     # a key that worked from this address
    fresh = gw.agent("fresh")                                  # a valid key never used from here
    keys = bad_keys(25, _revoked_key(gw))
    results = [attempt(gw, transport, k) for k in keys]
    # Throttled: the source spent its budget; the rest are refused as RateLimited, never 5xx.
    assert all(status in (1008, 1013) if transport == "ws" else status < 500 for status, _ in results), results
    kinds = [(e.get("data") or {}).get("type") for _, e in results]
    assert kinds[:BURST] == ["Unauthenticated"] * BURST, kinds
    assert kinds[BURST:] == ["RateLimited"] * (25 - BURST), kinds
    limited = results[-1]
    assert limited[0] == (1013 if transport == "ws" else 429), limited
    assert limited[1]["data"]["rule"] == "auth-failures" and limited[1]["data"]["retry_after"] > 0
    # A valid key is never locked out by someone else's failures from the same address: one never
    # used from here passes,
    status, body = attempt(gw, transport, fresh)
    assert status in (101, 200) and not body, (status, body)
    # as does an agent that already worked from here.
    assert gw.invoke(steady, "system.time").get("result")
    events = _events(gw, "auth.burst")
    assert len(events) == 1 and events[0]["severity"] == "critical", events
    gw.stop()    # the open window's count is written at shutdown
    recs = audit_records(gw)
    auth = [r for r in recs if str(r.get("kind", "")).startswith("auth.")]
    first = [r for r in auth if r["kind"] == "auth.failed"]
    bursts = [r for r in auth if r["kind"] == "auth.burst"]
    summaries = [r for r in auth if r["kind"] == "auth.failures"]
    assert len(first) == 1 and len(bursts) == 1 and len(summaries) == 1, auth
    wire = {"rpc": "jsonrpc", "mcp-2025": "mcp-http", "mcp-2026": "mcp-http", "ws": "mcp-ws"}[transport]
    assert first[0]["transport"] == wire and first[0]["reason"] == "unknown", first
    assert first[0]["credential"] == "stk_" and first[0]["length"] == 47, first
    s = summaries[0]
    assert s["failures"] == BURST and s["throttled"] == 25 - BURST, s     # the fresh key was not throttled
    # (on the WebSocket the keyless client sends a bad token in its auth message: malformed)
    assert set(s["reasons"]) == {"malformed", "unknown", "revoked"} | ({"missing"} if transport != "ws" else set()), s
    # Never a presented key, nor any of it past the `stk_` marker.
    text = cli_quick("audit", "export", "--format", "jsonl", home=gw.home).stdout
    for k in {*filter(None, keys), fresh}:
        assert k not in text
        if k.startswith("stk_") and len(k) > 6:
            assert k[:6] not in text, k[:6]
    v = cli_quick("audit", "verify", "--json", home=gw.home, check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def _events(server: Server, kind: str, seconds: float = 60.0) -> list[dict[str, Any]]:
    """Events of `kind` the owner's watch stream (`stockade watch`'s admin command) holds in the
    gateway's recent history: read from the admin socket until one arrives (and 0.5 s more)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    sock.connect(str(Home(server.home).admin_sock))
    events: list[dict[str, Any]] = []
    try:
        sock.sendall(json.dumps({"cmd": "watch", "args": {"history": 500}}).encode() + b"\n")
        buf, deadline, until = b"", time.monotonic() + seconds, None
        while time.monotonic() < min(deadline, until or deadline):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                ev = json.loads(line).get("event") or {}
                events.append(ev)
                if until is None and ev.get("kind") in (kind, "heartbeat"):
                    until = time.monotonic() + 0.5   # the rest of the history arrives with it
    finally:
        sock.close()
    return [ev for ev in events if ev.get("kind") == kind]


def test_the_throttle_is_shared_by_every_transport(gw: Server) -> None:
    """A source that spent its budget on JSON-RPC is throttled on MCP HTTP (both eras) and WebSocket."""
    for _ in range(BURST):
        assert attempt(gw, "rpc", "stk_wrong")[0] == 401
    for transport in ("mcp-2025", "mcp-2026", "ws"):
        status, e = attempt(gw, transport, "stk_wrong")
        assert e["data"]["type"] == "RateLimited", (transport, status, e)
