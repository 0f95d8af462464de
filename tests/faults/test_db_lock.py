"""Issue 23: another process holding stockade.db's write lock (here the sqlite3 shell inside
`BEGIN EXCLUSIVE`, a real second process) must not stall the gateway. What needs no write keeps
flowing; what needs one is refused at once with the typed `Unavailable` (503, retry_after) and
audited like any refused call; when the lock goes, the same calls work again without a restart.

Before the fix every write on the event loop waited the full 10 s busy timeout with the whole
gateway frozen, then failed as `Internal` (session.create even as a bare 500)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import Server, cli_json, need, run_cli, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ORG = """\
version: 1
default: notify
rules:
  - {id: sys, capability: "system.*", tier: autonomous}
  - {id: agent, capability: "agent.*", tier: autonomous}
  - {id: state, capability: "state.*", tier: autonomous}
  - {id: proc, capability: "process.*", tier: approval_required}
"""


class Locker:
    """`sqlite3 stockade.db` in its own process, inside BEGIN EXCLUSIVE until `release`."""

    def __init__(self, db: Path):
        self.proc = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("BEGIN EXCLUSIVE;\nINSERT INTO sessions VALUES('ses_lock','x','t',0,NULL);\n"
                              "SELECT 'locked';\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "locked"
        probe = sqlite3.connect(db, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")     # the lock really is held by the other process
        probe.close()

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("ROLLBACK;\n.quit\n")
            self.proc.stdin.close()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need(shutil.which("sqlite3") is not None, "the sqlite3 shell (Debian package sqlite3)")
    h = tmp_path_factory.mktemp("dblock") / "home"
    run_cli("init", home=h)
    (h / "policies" / "org.yaml").write_text(ORG)
    cfg = yaml.safe_load((h / "stockade.yaml").read_text())
    cfg["approvals"] = {"ttl": "24h", "hold_seconds": 1}
    (h / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    s = start_server(h)
    try:
        yield s
    finally:
        s.stop()


def _error(resp: dict[str, Any]) -> dict[str, Any]:
    assert "error" in resp, resp
    return dict(resp["error"]["data"])


def _unavailable(resp: dict[str, Any]) -> None:
    data = _error(resp)
    assert data["type"] == "Unavailable", data
    assert data["retry_after"] > 0 and data["recovery"][0]["action"] == "retry_later"


def _calls(home: Path, capability: str) -> list[dict[str, Any]]:
    recs = cli_json("audit", "query", "--limit", "5000", home=home)["records"]
    return [r for r in recs if r.get("capability") == capability and r.get("phase") in ("complete", "outcome")]


def _kind(home: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in cli_json("audit", "query", "--limit", "5000", home=home)["records"] if r.get("kind") == kind]


def test_a_held_lock_refuses_writes_at_once_and_everything_else_flows(live: Server) -> None:
    key = live.agent("alice")
    assert "result" in live.invoke(key, "state.set", {"key": "k", "value": "before"})
    before_state, before_proc = len(_calls(live.home, "state.set")), len(_calls(live.home, "process.run"))
    before_requests = len(_kind(live.home, "approval.requested"))
    lock = Locker(live.home / "stockade.db")
    try:
        # Eight writers at once: on the old code each froze the loop for 10 s in turn.
        writers: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: writers.append(live.rpc(key, "session.create").json()))
                   for _ in range(8)]
        for t in threads:
            t.start()
        # Meanwhile the gateway answers: health, calls that only read, listings. The timeouts are
        # far below 8 x 10 s, far above any real latency here.
        assert httpx.get(f"{live.url}/healthz", timeout=30).json() == {"status": "ok"}
        assert "result" in live.invoke(key, "system.time", timeout=30)
        assert "result" in live.invoke(key, "state.get", {"key": "k"}, timeout=30)
        assert "result" in live.rpc(key, "capabilities.list", timeout=30).json()
        for t in threads:
            t.join(60)
        assert len(writers) == 8
        for w in writers:
            _unavailable(w)
        # Calls that need a write: a typed refusal with a retry hint, never Internal.
        _unavailable(live.invoke(key, "state.set", {"key": "k", "value": "during"}, timeout=60))
        _unavailable(live.invoke(key, "process.run", {"argv": ["true"]}, timeout=60))   # the approval row
        # A session header checked against the table still reads fine under the write lock.
        r = live.rpc(key, "system.time", headers={"stockade-session": "ses_nope"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["data"]["type"] == "InvalidInput"
    finally:
        lock.release()

    # The lock is gone: the same calls work again, no restart.
    assert "result" in live.rpc(key, "session.create").json()
    assert live.invoke(key, "state.set", {"key": "k", "value": "after"})["result"]
    held = live.invoke(key, "process.run", {"argv": ["true"]}, timeout=60)
    assert _error(held)["type"] == "ApprovalPending"
    assert live.invoke(key, "state.get", {"key": "k"})["result"]["value"] == "after"
    assert json.dumps(live.invoke(key, "state.get", {"key": "k"})).count("during") == 0

    # Nothing was lost: every call the gateway accepted has its record, the refused ones too.
    state = _calls(live.home, "state.set")[before_state:]
    assert [(r.get("outcome") or {}).get("error") for r in state] == ["Unavailable", None]
    proc = _calls(live.home, "process.run")[before_proc:]
    assert [(r.get("outcome") or {}).get("error") for r in proc][:1] == ["Unavailable"]
    # ...and none for what did not happen: one approval was requested (after the lock), not two.
    assert len(_kind(live.home, "approval.requested")) == before_requests + 1
    assert cli_json("audit", "verify", home=live.home)["ok"] is True


def test_a_short_lock_is_waited_out_off_the_loop(live: Server) -> None:
    """Off the event loop (state.* runs in a worker thread) a short lock is waited out (up to 2 s):
    only the loop refuses at once."""
    key = live.agent("bob")
    lock = Locker(live.home / "stockade.db")
    timer = threading.Timer(0.5, lock.release)
    timer.start()
    try:
        assert "result" in live.invoke(key, "state.set", {"key": "k", "value": "v"}, timeout=60)
    finally:
        timer.join()
        lock.release()


def test_a_websocket_session_during_the_lock_is_told_to_come_back(live: Server) -> None:
    """The WebSocket transport writes its session row when it connects: under the lock it answers
    Unavailable and closes 1013 (try again later) instead of dying with a traceback (1011)."""
    key = live.agent("carol")
    url = live.url.replace("http", "ws") + "/mcp/ws"
    lock = Locker(live.home / "stockade.db")
    try:
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            body = json.loads(ws.recv(30))
            assert body["error"]["data"]["type"] == "Unavailable", body
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    finally:
        lock.release()
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "ws", "version": "1"}}}))
        assert json.loads(ws.recv(30))["result"]["serverInfo"]["name"] == "stockade"


def test_the_wait_depends_on_where_the_statement_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loop 0.2 s, in a serving process's threads 2 s, in the CLI 10 s; a part that sets its
    own busy_timeout (the rate limiter) does not keep it on the loop."""
    import asyncio

    from stockade.core import db

    conn = db.connect(tmp_path / "t.db", check_same_thread=False)

    def wait() -> int:
        conn.execute("SELECT 1")
        return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])

    async def on_loop() -> tuple[int, int]:
        conn.execute("PRAGMA busy_timeout=1000")
        return wait(), await asyncio.to_thread(wait)

    assert wait() == 10_000
    assert asyncio.run(on_loop()) == (200, 10_000)
    monkeypatch.setattr(db, "_serving", True)
    assert asyncio.run(on_loop()) == (200, 2_000)


def _database_status(home: Path) -> str:
    p = run_cli("status", "--json", home=home, check=False)
    return str(json.loads(p.stdout)["parts"].get("database"))


def _until(home: Path, want: str) -> None:
    deadline = time.monotonic() + 60
    while (got := _database_status(home)) != want:
        assert time.monotonic() < deadline, f"database health stayed {got}, wanted {want}"
        time.sleep(0.5)


def test_health_says_the_database_is_locked_and_recovers(live: Server) -> None:
    """Health is true throughout: degraded while the lock is held (no call needed to notice), ok
    again once it goes; the exit code of `stockade status` follows."""
    _until(live.home, "ok")
    lock = Locker(live.home / "stockade.db")
    try:
        _until(live.home, "degraded")
        p = run_cli("status", "--json", home=live.home, check=False)
        assert p.returncode == 1 and "locked by another process" in json.loads(p.stdout)["health"]["database"]["detail"]
    finally:
        lock.release()
    _until(live.home, "ok")


def test_database_health_needs_two_locked_probes() -> None:
    from stockade.gateway.service import database_health

    assert database_health(True, False) == {"status": "ok"}
    assert database_health(True, True)["status"] == "degraded"
    assert database_health(False, True) == {"status": "ok"}


def test_an_approval_decided_during_the_lock_is_refused_whole_and_decided_once_after(live: Server) -> None:
    """The owner's decision is a write: under the lock it is Unavailable and nothing of it exists
    (still pending, no approval.decided record); after the lock it is decided once."""
    key = live.agent("dave")
    held = live.invoke(key, "process.run", {"argv": ["true"]}, timeout=60)
    aid = _error(held)["approval"]

    def decided() -> list[dict[str, Any]]:
        recs = cli_json("audit", "query", "--limit", "5000", home=live.home)["records"]
        return [r for r in recs if r.get("kind") == "approval.decided" and r.get("approval") == aid]

    lock = Locker(live.home / "stockade.db")
    try:
        p = run_cli("approvals", "approve", aid, "--json", home=live.home, check=False)
        assert p.returncode != 0 and json.loads(p.stdout)["error"]["type"] == "Unavailable", (p.stdout, p.stderr)
    finally:
        lock.release()
    mine = [a for a in cli_json("approvals", "list", home=live.home)["approvals"] if a["approval"] == aid]
    assert len(mine) == 1 and decided() == []
    assert cli_json("approvals", "approve", aid, home=live.home)["status"] == "approved"
    assert len(decided()) == 1
