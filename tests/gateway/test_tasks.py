"""Approvals as MCP Tasks (issue 19) through a real `stockade serve`, raw JSON-RPC on `/mcp` (the
`mcp` SDK has no client for the Tasks extension): negotiated or not (per request for stateless
2026-07-28 clients, at initialize for 2025-11-25 sessions), bound to the agent, cancel, rejected,
expired, completed, a restart in the middle, malformed `_meta`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import Server, cli_json, start_server
from tests.supervision.helpers import audit_records, make_home

from stockade.gateway import tasks

pytestmark = pytest.mark.xdist_group("tasks-gateway")
EXT = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"


def meta(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    caps: dict[str, Any] = {} if extensions is None else {"extensions": extensions}
    return {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": caps}


WITH = meta({EXT: {}})
WITHOUT = meta()


def _body(r: httpx.Response) -> dict[str, Any]:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        frames = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        return [f for f in frames if "id" in f][-1]
    return r.json()


def call(s: Server, key: str, method: str, params: dict[str, Any], m: dict[str, Any] | None = WITH,
         name: str | None = None) -> dict[str, Any]:
    """One stateless 2026-07-28 request (the envelope in `_meta`, the SEP-2243 headers)."""
    p = {**params, "_meta": m} if m is not None else params
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Mcp-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    r = httpx.post(f"{s.url}/mcp", json={"jsonrpc": "2.0", "id": 7, "method": method, "params": p},
                   headers=headers, timeout=60)
    return _body(r)


def tool(s: Server, key: str, capability: str, args: dict[str, Any] | None = None,
         m: dict[str, Any] | None = WITH) -> dict[str, Any]:
    name = capability.replace(".", "__")
    return call(s, key, "tools/call", {"name": name, "arguments": args or {}}, m, name=name)


def task_get(s: Server, key: str, tid: str, m: dict[str, Any] | None = WITH) -> dict[str, Any]:
    return call(s, key, "tasks/get", {"taskId": tid}, m, name=tid)


def _task_home(tmp_path: Path) -> Path:
    h = make_home(tmp_path, hold=60)
    cfg = yaml.safe_load((h / "stockade.yaml").read_text())
    cfg["approvals"] = {"ttl": "1h", "hold_seconds": 0.3}
    (h / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    return h


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return _task_home(tmp_path)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One gateway for the tests that need no restart (each uses its own agents and approvals)."""
    s = start_server(_task_home(tmp_path_factory.mktemp("tasks")))
    yield s
    s.stop()


def test_without_the_extension_calls_are_unchanged_and_tasks_methods_are_gated(srv: Server) -> None:
    key = srv.agent("plain")
    r = tool(srv, key, "system.time", m=WITHOUT)["result"]
    assert r.get("resultType") != "task" and "taskId" not in r, r
    assert r["isError"] is True and json.loads(r["content"][0]["text"])["type"] == "ApprovalPending", r
    for method, params in (("tasks/get", {"taskId": "x"}), ("tasks/cancel", {"taskId": "x"}),
                           ("tasks/update", {"taskId": "x", "inputResponses": {}})):
        e = call(srv, key, method, params, WITHOUT, name="x")["error"]
        assert e["code"] == -32021, e
        assert e["data"]["requiredCapabilities"] == {"extensions": {EXT: {}}}, e
    disc = call(srv, key, "server/discover", {}, WITHOUT)["result"]
    assert EXT in disc["capabilities"]["extensions"] and "tasks" not in disc["capabilities"], disc


def test_a_held_call_is_a_task_that_completes_with_the_real_result(srv: Server) -> None:
    key = srv.agent("tasker")
    r = tool(srv, key, "system.time")["result"]
    assert r["resultType"] == "task" and r["status"] == "working", r
    tid = r["taskId"]
    assert cli_json("approvals", "show", tid, home=srv.home)["status"] == "pending"
    assert {"createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"} <= set(r) and "task" not in r, r
    got = task_get(srv, key, tid)["result"]
    assert got["status"] == "working" and got["taskId"] == tid and got["resultType"] == "complete", got
    cli_json("approvals", "approve", tid, home=srv.home)
    done = _until(lambda: task_get(srv, key, tid)["result"], lambda t: t["status"] != "working")
    assert done["status"] == "completed", done
    assert done["result"]["isError"] is False and "utc" in json.dumps(done["result"]["structuredContent"]), done
    # Every transition is in the audit log, linked to the task: asked, handed out, decided, run.
    trail = _until(lambda: _trail(srv.home, tid), lambda t: "approval.executed" in t)
    assert list(trail)[:4] == ["approval.requested", "task.created", "approval.decided", "approval.executed"], trail
    assert trail["approval.decided"]["decision"] == "approved", trail
    ran = trail["approval.executed"]
    assert ran["status"] == "executed" and ran["call"], ran
    outcome = [r for r in audit_records(srv.home) if r.get("call") == ran["call"] and r.get("phase") == "complete"]
    assert [r["outcome"]["status"] for r in outcome] == ["ok"], outcome


def test_another_agents_task_is_not_found_like_an_unknown_id(srv: Server) -> None:
    owner, other = srv.agent("owner-a"), srv.agent("other-b")
    tid = tool(srv, owner, "system.time")["result"]["taskId"]
    theirs = task_get(srv, other, tid)["error"]
    unknown = task_get(srv, other, "apr_000000000000")["error"]
    assert theirs["code"] == unknown["code"] == -32602, (theirs, unknown)
    assert theirs["message"] == unknown["message"], (theirs, unknown)
    for method in ("tasks/cancel", "tasks/update"):
        e = call(srv, other, method, {"taskId": tid, "inputResponses": {}}, name=tid)["error"]
        assert (e["code"], e["message"]) == (unknown["code"], unknown["message"]), (method, e)
    assert cli_json("approvals", "show", tid, home=srv.home)["status"] == "pending"   # nothing changed
    assert task_get(srv, owner, tid)["result"]["status"] == "working"


def test_cancel_withdraws_the_request_and_the_owner_can_no_longer_approve_it(srv: Server) -> None:
    key = srv.agent("canceller")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    ack = call(srv, key, "tasks/cancel", {"taskId": tid}, name=tid)["result"]
    assert ack["resultType"] == "complete", ack
    got = task_get(srv, key, tid)["result"]
    assert got["status"] == "cancelled", got
    shown = cli_json("approvals", "show", tid, home=srv.home)
    assert shown["status"] == "expired" and shown["reason"] == "withdrawn by the agent", shown
    from tests.conftest import run_cli
    assert run_cli("approvals", "approve", tid, home=srv.home, check=False).returncode != 0
    withdrawn = [r for r in audit_records(srv.home) if r.get("kind") == "approval.withdrawn"]
    assert [r["approval"] for r in withdrawn] == [tid], withdrawn
    # Cancelling again (or a decided task) is acknowledged and changes nothing.
    assert "result" in call(srv, key, "tasks/cancel", {"taskId": tid}, name=tid)
    assert task_get(srv, key, tid)["result"]["status"] == "cancelled"


def test_rejected_is_failed_with_the_stockade_error(srv: Server) -> None:
    key = srv.agent("rejected")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    cli_json("approvals", "reject", tid, "--reason", "not now", home=srv.home)
    got = task_get(srv, key, tid)["result"]
    assert got["status"] == "failed", got
    assert got["error"]["data"]["type"] == "ApprovalRejected" and "not now" in got["error"]["message"], got
    trail = _trail(srv.home, tid)
    assert trail["approval.decided"]["decision"] == "rejected" and "approval.executed" not in trail, trail


def test_a_call_that_fails_after_approval_is_failed_with_its_own_error(srv: Server) -> None:
    key = srv.agent("fails-later")
    # Calls that do not wait are answered as usual, extension or not.
    plain = tool(srv, key, "system.info")["result"]
    assert "taskId" not in plain and plain["isError"] is False, plain
    # agent.approval with wait=7 waits for the owner; once approved it looks up an id that does
    # not exist, so the call itself fails.
    tid = tool(srv, key, "agent.approval", {"approval": "apr_missing", "wait": 7})["result"]["taskId"]
    cli_json("approvals", "approve", tid, home=srv.home)
    got = _until(lambda: task_get(srv, key, tid)["result"], lambda t: t["status"] != "working")
    assert got["status"] == "failed" and "result" not in got, got
    assert got["error"]["data"]["type"] == "ApprovalNotFound" and got["error"]["data"]["approval"] == tid, got
    ran = _until(lambda: _trail(srv.home, tid), lambda t: "approval.executed" in t)["approval.executed"]
    assert ran["status"] == "failed" and ran["error"] == "ApprovalNotFound", ran


def test_bad_task_requests_get_structured_errors(srv: Server) -> None:
    key = srv.agent("badinput")
    tid = tool(srv, key, "system.time")["result"]["taskId"]
    for params in ({"taskId": ""}, {"taskId": 5}, {}, {"taskId": "x" * 500}):
        e = call(srv, key, "tasks/get", params)["error"]
        assert e["code"] == -32602, (params, e)
    e = call(srv, key, "tasks/update", {"taskId": tid, "inputResponses": []}, name=tid)["error"]
    assert e["code"] == -32602, e
    assert "result" in call(srv, key, "tasks/update", {"taskId": tid, "inputResponses": {}}, name=tid)
    bad_meta = {**WITH, "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: []}}}
    for method in ("tasks/get", "tasks/cancel"):
        e = call(srv, key, method, {"taskId": tid}, bad_meta, name=tid)["error"]
        assert e["code"] == -32602 and e["data"]["type"] == "InvalidInput", (method, e)
    assert task_get(srv, key, tid)["result"]["status"] == "working"
    assert cli_json("approvals", "show", tid, home=srv.home)["status"] == "pending"


def _session(s: Server, key: str, extensions: dict[str, Any] | None) -> tuple[str, Any]:
    """A 2025-11-25 session that declared `extensions` at initialize."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    caps = {"extensions": extensions} if extensions is not None else {}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": caps,
                       "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx.post(f"{s.url}/mcp", json=init, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    headers.update({"Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"})
    httpx.post(f"{s.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

    def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{s.url}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": method, "params": params},
                       headers=headers, timeout=60)
        return _body(r)
    return sid, send


def test_sessions_negotiate_at_initialize(srv: Server) -> None:
    key = srv.agent("sessions")
    _, with_ext = _session(srv, key, {EXT: {}})
    handle = with_ext("tools/call", {"name": "system__time", "arguments": {}})["result"]
    assert handle["resultType"] == "task" and handle["status"] == "working", handle
    assert with_ext("tasks/get", {"taskId": handle["taskId"]})["result"]["status"] == "working"
    _, without = _session(srv, key, None)
    plain = without("tools/call", {"name": "system__time", "arguments": {"x": 1} if False else {}})["result"]
    assert "taskId" not in plain and plain["isError"] is True, plain
    assert without("tasks/get", {"taskId": handle["taskId"]})["error"]["code"] == -32021


@pytest.mark.parametrize("bad", ["nope", {"extensions": []}, {"extensions": {EXT: "yes"}}])
def test_malformed_meta_is_refused_and_creates_nothing(srv: Server, bad: Any) -> None:
    key = srv.agent("malformed")
    m = {**WITH, "io.modelcontextprotocol/clientCapabilities": bad}
    r = tool(srv, key, "system.time", m=m)
    assert "error" in r and r["error"]["code"] == -32602, r
    mine = [a for a in cli_json("approvals", "list", home=srv.home)["approvals"] if a.get("agent") == "malformed"]
    assert mine == []


def test_tasks_survive_a_restart(home: Path) -> None:
    s = start_server(home)
    try:
        key = s.agent("restart")
        tid = tool(s, key, "system.time")["result"]["taskId"]
    finally:
        s.stop()
    s = start_server(home)
    try:
        assert task_get(s, key, tid)["result"]["status"] == "working"
        cli_json("approvals", "approve", tid, home=home)
        done = _until(lambda: task_get(s, key, tid)["result"], lambda t: t["status"] != "working")
        assert done["status"] == "completed", done
    finally:
        s.stop()


def test_expired_is_failed(tmp_path: Path) -> None:
    h = make_home(tmp_path, hold=60)
    cfg = yaml.safe_load((h / "stockade.yaml").read_text())
    cfg["approvals"] = {"ttl": "2s", "hold_seconds": 0.3}
    (h / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    s = start_server(h)
    try:
        key = s.agent("expiry")
        tid = tool(s, key, "system.time")["result"]["taskId"]
        got = _until(lambda: task_get(s, key, tid)["result"], lambda t: t["status"] != "working")
        assert got["status"] == "failed" and got["error"]["data"]["type"] == "ApprovalExpired", got
        assert set(_trail(h, tid)) == {"approval.requested", "task.created", "approval.expired"}, _trail(h, tid)
    finally:
        s.stop()


# -- the pure part ----------------------------------------------------------------------------
def test_declared_reads_the_request_then_the_session() -> None:
    assert tasks.declared({"_meta": WITH}, None)
    assert not tasks.declared({"_meta": WITHOUT}, None)
    assert tasks.declared({"_meta": WITHOUT}, {EXT: {}})     # declared at initialize
    assert not tasks.declared(None, None) and not tasks.declared({}, {"other/ext": {}})
    for bad in ("x", {"io.modelcontextprotocol/clientCapabilities": 3},
                {"io.modelcontextprotocol/clientCapabilities": {"extensions": [EXT]}}):
        with pytest.raises(Exception, match="must be an object"):
            tasks.declared({"_meta": bad}, None)


def test_task_views_follow_the_approval() -> None:
    base = {"approval": "apr_1", "capability": "system.time", "created": 1000.0, "expires": 2000.0}
    assert tasks.task_of({**base, "status": "pending"})["status"] == "working"
    assert tasks.task_of({**base, "status": "running", "decided": 1001.0})["lastUpdatedAt"].startswith("1970")
    done = tasks.task_of({**base, "status": "executed", "result": {"a": 1}, "finished": 1002.0})
    assert done["status"] == "completed" and done["result"]["structuredContent"] == {"a": 1}
    failed = tasks.task_of({**base, "status": "failed", "error": {"type": "Timeout", "message": "slow"}})
    assert failed["status"] == "failed" and failed["error"]["data"]["type"] == "Timeout"
    assert tasks.task_of({**base, "status": "expired", "reason": "withdrawn by the agent"})["status"] == "cancelled"
    assert tasks.task_of({**base, "status": "expired", "reason": "agent revoked"})["status"] == "failed"
    handle = tasks.created({**base, "status": "pending"})
    assert handle["resultType"] == "task" and "result" not in handle and handle["createdAt"].endswith("Z")


def _trail(home: Path, tid: str) -> dict[str, dict[str, Any]]:
    """The audit records about one task (kind -> the last record of that kind), in log order."""
    return {r["kind"]: r for r in audit_records(home) if r.get("approval") == tid and r.get("kind")}


def _until(get: Any, done: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        v = get()
        if done(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.2)
