"""End to end through `stockade serve`: an agent call under approval_required is held, the owner
decides from the CLI over run/admin.sock, the agent gets the real result, the audit log holds
request, decision and execution, and changed arguments need a new approval."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import STOCKADE, Server, cli_json, cli_quick, need, need_root, quick_json, run_cli

from .helpers import Call, audit_records, make_home, serve, wait_pending

pytestmark = pytest.mark.xdist_group("supervision-e2e")


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway holding calls up to 60 s, shared by the tests that decide their own held calls
    (each its own agent; every approval a test creates is decided within it)."""
    s = serve(make_home(tmp_path_factory.mktemp("held")))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose hold ends after 0.5 s (ApprovalPending at once), shared likewise."""
    s = serve(make_home(tmp_path_factory.mktemp("short"), hold=0.5))
    try:
        yield s
    finally:
        s.stop()


def _sandbox_ok(server: Any) -> bool:
    r = server.invoke(server.agent("probe"), "system.health")
    return r.get("result", {}).get("layers", {}).get("sandbox", {}).get("status") == "ok"


def test_process_run_held_then_approved_from_cli(held: Server) -> None:
    need_root()
    server, home = held, held.home
    need(_sandbox_ok(server), "the sandbox layer is not healthy on this machine (stockade doctor)")
    key = server.agent("alice")
    argv = ["sh", "-c", "echo approved > out.txt; echo ran"]
    call = Call(server, key, "process.run", {"argv": argv})
    call.start()
    a = wait_pending(home)
    assert a["agent"] == "alice", a
    assert a["capability"] == "process.run" and a["args"] == {"argv": argv} and a["held"] is True
    assert not (home / "workspaces" / "alice" / "out.txt").exists()   # held: nothing ran yet
    shown = run_cli("approvals", "show", a["approval"], home=home).stdout
    assert "echo approved > out.txt" in shown

    out = cli_json("approvals", "approve", a["approval"], home=home)
    assert out["changed"] is True
    resp = call.result()
    assert "result" in resp, resp
    assert resp["result"]["exit_code"] == 0 and resp["result"]["stdout"] == "ran\n"
    assert (home / "workspaces" / "alice" / "out.txt").read_text() == "approved\n"

    # Idempotent: a second approve runs nothing; a late reject reports the recorded outcome.
    again = cli_json("approvals", "approve", a["approval"], home=home)
    assert again["changed"] is False and again["status"] == "executed"
    late = run_cli("approvals", "reject", a["approval"], "--json", home=home, check=False)
    assert late.returncode == 1 and json.loads(late.stdout)["status"] == "executed"

    # The agent can fetch the stored outcome later.
    st = server.rpc(key, "approvals.status", {"approval": a["approval"]}).json()["result"]
    assert st["status"] == "executed" and st["result"]["stdout"] == "ran\n"

    # The audit log holds request, decision and execution (decision + outcome of the call).
    recs = audit_records(home)
    req = [r for r in recs if r.get("kind") == "approval.requested" and r.get("approval") == a["approval"]]
    dec = [r for r in recs if r.get("kind") == "approval.decided" and r.get("approval") == a["approval"]]
    call_recs = [r for r in recs if r.get("capability") == "process.run" and r.get("call") == a["call"]
                 and not r.get("kind")]
    assert len(req) == 1 and len(dec) == 1 and dec[0]["decision"] == "approved"
    # who decided: the admin socket's peer as the kernel reports it (SO_PEERCRED), not a fixed name
    assert dec[0]["by"]["via"] == "admin-socket" and dec[0]["by"]["uid"] == os.getuid()
    assert {r["phase"] for r in call_recs} == {"decision", "outcome"}
    assert [r["outcome"]["status"] for r in call_recs if r["phase"] == "outcome"] == ["ok"]
    assert req[0]["seq"] < dec[0]["seq"] < min(r["seq"] for r in call_recs)
    assert cli_quick("audit", "verify", home=home).returncode == 0

    # Changed arguments are not covered by the earlier approval.
    argv2 = ["sh", "-c", "echo changed > out.txt; echo ran"]
    call2 = Call(server, key, "process.run", {"argv": argv2})
    call2.start()
    b = wait_pending(home, exclude={a["approval"]})
    assert b["approval"] != a["approval"] and b["args"] == {"argv": argv2}
    assert b["args_hash"] != a["args_hash"]
    cli_json("approvals", "reject", b["approval"], "--reason", "not this one", home=home)
    err = call2.result()["error"]
    assert err["data"]["type"] == "ApprovalRejected" and err["data"]["approval"] == b["approval"]
    assert (home / "workspaces" / "alice" / "out.txt").read_text() == "approved\n"


def test_hold_timeout_then_background_run_and_status(short: Server) -> None:
    """Short hold: the agent gets ApprovalPending(id), the owner approves later, the gateway runs
    the call once in the background and the agent fetches the real result (JSON-RPC and the
    agent.approval capability)."""
    server, home = short, short.home
    key = server.agent("holder")
    bob = server.agent("stranger")
    r = server.invoke(key, "system.time")
    assert r["error"]["code"] == -32002 and r["error"]["data"]["type"] == "ApprovalPending"
    aid = r["error"]["data"]["approval"]
    assert aid.startswith("apr_")
    st = server.rpc(key, "approvals.status", {"approval": aid}).json()["result"]
    assert st["status"] == "pending" and st["final"] is False
    # Another agent cannot see it.
    other = server.rpc(bob, "approvals.status", {"approval": aid}).json()["error"]
    assert other["data"]["type"] == "ApprovalNotFound"
    # Unknown / malformed ids: clear errors.
    assert server.rpc(key, "approvals.status", {"approval": "apr_nope"}).json()["error"]["data"]["type"] == \
        "ApprovalNotFound"
    assert server.rpc(key, "approvals.status", {"approval": 5}).json()["error"]["data"]["type"] == "InvalidInput"
    bad = run_cli("approvals", "approve", "apr_doesnotexist", "--json", home=home, check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["type"] == "ApprovalNotFound"

    cli_json("approvals", "approve", aid, home=home)
    st = server.rpc(key, "approvals.status", {"approval": aid, "wait": 30}).json()["result"]
    assert st["status"] == "executed" and st["final"] is True and "unix" in st["result"]
    via_cap = server.invoke(key, "agent.approval", {"approval": aid, "wait": 0})["result"]
    assert via_cap["status"] == "executed" and via_cap["result"] == st["result"]
    shown = cli_json("approvals", "show", aid, home=home)
    assert shown["status"] == "executed"
    assert shown["decided_by"]["via"] == "admin-socket" and shown["decided_by"]["uid"] == os.getuid()
    # Exactly one execution in the audit log.
    runs = [x for x in audit_records(home) if x.get("capability") == "system.time" and not x.get("kind")
            and x.get("agent") == "holder" and x["outcome"]["status"] == "ok"]
    assert len(runs) == 1


def test_grant_from_cli(short: Server) -> None:
    server, home = short, short.home
    key = server.agent("grantee")
    g = cli_json("approvals", "grant", "--agent", "grantee", "--capability", "system.time", "--minutes", "5",
                 home=home)["grant"]
    assert g["agent"] == "grantee"
    assert "result" in server.invoke(key, "system.time")
    assert "result" in server.invoke(key, "system.time")
    cli_json("approvals", "revoke-grant", g["grant"], home=home)
    assert server.invoke(key, "system.time")["error"]["data"]["type"] == "ApprovalPending"
    kinds = [(r.get("kind"), r.get("decision")) for r in audit_records(home)
             if r.get("kind") and r.get("agent") == "grantee"]
    assert ("approval.decided", "grant") in kinds and ("approval.decided", "grant_revoked") in kinds
    assert sum(1 for k, _ in kinds if k == "approval.grant_used") == 2
    bad = run_cli("approvals", "grant", "--agent", "grantee", "--capability", "nope.nope", "--minutes", "5",
                  "--json", home=home, check=False)
    assert bad.returncode == 2


def test_watch_streams_sanitised_events_and_agents_status(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    server = serve(home)
    try:
        key = server.agent("alice")
        proc = subprocess.Popen([*STOCKADE, "watch", "--history", "0", "--home", str(home)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen: queue.Queue[bytes] = queue.Queue()
        reader = threading.Thread(target=lambda: [seen.put(x) for x in proc.stdout], daemon=True)  # type: ignore[union-attr]
        reader.start()

        def next_notify(timeout: float) -> bytes | None:
            try:
                while True:
                    line = seen.get(timeout=timeout)
                    if b"call.notify" in line:
                        return line
            except queue.Empty:
                return None

        try:
            # Until `watch` has subscribed (its start-up takes a while on a busy machine), calls made
            # before are not shown (history 0): call until one is seen, then send the hostile one.
            first = None
            deadline = time.monotonic() + 60
            while first is None and time.monotonic() < deadline:
                server.invoke(key, "agent.whoami")
                first = next_notify(1.0)
            evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mRED"
            # agent.approval with wait=3 is notify-tier in the test policy: its argument reaches the owner
            server.invoke(key, "agent.approval", {"approval": evil, "wait": 3})
            second = next_notify(20)
            while second is not None and b"agent.approval" not in second:   # a late whoami
                second = next_notify(20)
            lines = [x for x in (first, second) if x is not None]
            assert len(lines) == 2, f"notify events missing: {lines}"
            assert b"agent.whoami" in lines[0] and b"pwned" in lines[1] and b"RED" in lines[1]
        finally:
            proc.terminate()
            proc.wait(10)
        reader.join(10)
        out = b"".join(list(seen.queue))
        assert b"\x1b" not in b"".join(lines) + out and b"\x07" not in out
        st = cli_json("agents", home=home)
        assert st["server"] == "running" and {a["name"] for a in st["agents"]} >= {"alice"}
    finally:
        server.stop()
    st = cli_json("agents", home=home)
    assert st["server"] == "not running" and "alice" in {a["name"] for a in st["agents"]}


class _Hook(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def test_webhook_delivery_and_a_dead_webhook_never_blocks(tmp_path: Path) -> None:
    _Hook.got = []
    srv = HTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    home = make_home(tmp_path, webhook=f"http://127.0.0.1:{srv.server_address[1]}/hook")
    server = serve(home)
    try:
        key = server.agent("alice")
        assert "result" in server.invoke(key, "system.info")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e.get("kind") == "call.notify" for e in _Hook.got):
            time.sleep(0.1)
        ev = next(e for e in _Hook.got if e.get("kind") == "call.notify")
        assert ev["source"] == "stockade" and ev["data"]["capability"] == "system.info"
    finally:
        server.stop()
        srv.shutdown()

    # A webhook that accepts the connection and never answers: calls still complete.
    import socket

    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(100)
    home2 = make_home(tmp_path / "2", webhook=f"http://127.0.0.1:{sink.getsockname()[1]}/hook")
    server = serve(home2)
    try:
        key = server.agent("alice")
        for _ in range(5):
            assert "result" in server.invoke(key, "system.info", timeout=30)
    finally:
        server.stop()
        sink.close()


def test_admin_socket_refuses_other_uids(tmp_path: Path) -> None:
    """run/admin.sock is 0600 and checks SO_PEERCRED: even with the file modes opened up,
    another uid cannot use the admin channel (so it cannot approve anything)."""
    need_root()
    import os
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="stk-peercred-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        home = make_home(base)
        server = serve(home)
        try:
            sock = home / "run" / "admin.sock"
            assert (sock.stat().st_mode & 0o777) == 0o600
            os.chmod(home, 0o711)
            os.chmod(home / "run", 0o711)
            os.chmod(sock, 0o666)
            # The gateway answers a refused peer at once and hangs up; read that answer.
            code = ("import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
                    "print(s.makefile().readline())")
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                "-c", code, str(sock)], capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            resp = json.loads(p.stdout)
            assert resp["ok"] is False and resp["error"]["type"] == "Unauthenticated"
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_mcp_client_gets_progress_while_held_then_the_real_result(held: Server) -> None:
    """The official MCP SDK client: the held tools/call sends progress notifications (so the
    client knows it waits for the owner), and returns the real result once approved."""
    import asyncio

    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    server, home = held, held.home
    key = server.agent("mcp-client")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def go() -> None:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode="legacy") as c:
            call = asyncio.create_task(c.call_tool("system__time", {}, progress_callback=on_progress))
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while not progress and loop.time() < end:
                await asyncio.sleep(0.1)
            assert progress, "no progress notification while held"
            assert "approve" in (progress[0][2] or "") and progress[0][1] == 60
            a = await asyncio.to_thread(wait_pending, home)
            assert a["agent"] == "mcp-client", a
            await asyncio.to_thread(cli_json, "approvals", "approve", a["approval"], home=home)
            r = await asyncio.wait_for(call, 30)
            assert not r.is_error and isinstance(r.structured_content["unix"], int)

    asyncio.run(go())


def test_pending_approval_survives_a_restart(tmp_path: Path) -> None:
    """Approvals live in stockade.db: a call left pending when the gateway stopped can be approved
    after the restart; it runs once and the agent fetches the result."""
    home = make_home(tmp_path, hold=0.5)
    server = serve(home)
    try:
        key = server.agent("alice")
        aid = server.invoke(key, "system.time")["error"]["data"]["approval"]
    finally:
        assert server.stop() == 0
    server = serve(home)
    try:
        assert quick_json("approvals", "list", home=home)["approvals"][0]["approval"] == aid
        cli_json("approvals", "approve", aid, home=home)
        st = server.rpc(key, "approvals.status", {"approval": aid, "wait": 30}).json()["result"]
        assert st["status"] == "executed" and "unix" in st["result"]
    finally:
        server.stop()
