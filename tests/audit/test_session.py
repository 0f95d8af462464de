"""Sessions: `audit query --session`, `audit session S` and the dashboard page (issue 21 part 2)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.audit.helpers import write_log
from tests.conftest import Server, cli_json, run_cli, start_server
from tests.supervision.helpers import wait_pending

from stockade.audit import session as sess
from stockade.audit.index import Index
from stockade.supervision.dashboard import views

pytestmark = pytest.mark.xdist_group("audit-cli")

ORG = """version: 1
default: approval_required
rules:
  - {id: time, capability: system.time, tier: autonomous}
  - {id: info-review, capability: system.info, tier: approval_required}
  - {id: no-health, capability: system.health, tier: blocked}
"""


def _call(server: Server, key: str, cap: str, session: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return server.rpc(key, "capabilities.invoke", {"name": cap, "arguments": args or {}},
                      headers={"stockade-session": session}, timeout=120).json()


def test_session_timeline_end_to_end(home: Path) -> None:
    (home / "policies" / "org.yaml").write_text(ORG)
    server = start_server(home)
    try:
        key = server.agent("alice")
        s1, other = (server.rpc(key, "session.create").json()["result"]["session"] for _ in range(2))
        assert "result" in _call(server, key, "system.time", s1)
        assert "result" in _call(server, key, "system.time", other)            # another session
        held: dict[str, Any] = {}
        t = threading.Thread(target=lambda: held.update(_call(server, key, "system.info", s1)))
        t.start()
        a = wait_pending(home)
        cli_json("approvals", "approve", a["approval"], home=home)
        t.join(60)
        assert "result" in held, held
        assert _call(server, key, "system.health", s1)["error"]            # blocked
        assert _call(server, key, "system.time", s1, {"x": 1})["error"]    # refused before policy
        live = cli_json("audit", "session", s1, home=home)                 # while the server runs
    finally:
        assert server.stop() == 0
    out = cli_json("audit", "session", s1, home=home)
    assert out == live
    calls = out["calls"]
    assert [c["capability"] for c in calls] == ["system.time", "system.info", "system.health", "system.time"]
    seqs = [c["seq"] for c in calls]
    assert seqs == sorted(seqs)
    first, approved, blocked, refused = calls
    assert first["decision"]["tier"] == "autonomous" and first["decision"]["rule"] == "time"
    assert first["outcome"] == {"status": "ok"} and isinstance(first["duration_us"], int)
    assert approved["decision"]["tier"] == "approval_required" and approved["decision"]["rule"] == "info-review"
    assert approved["approval"]["status"] == "approved" and approved["approval"]["id"] == a["approval"]
    assert approved["approval"]["by"]                                             # who decided
    assert approved["outcome"] == {"status": "ok"} and len(approved["seqs"]) >= 3  # requested, decided, call
    assert blocked["decision"]["tier"] == "blocked" and blocked["outcome"]["error"] == "PolicyDenied"
    assert refused["decision"] == {} or refused["decision"]["tier"] is None or "tier" not in refused["decision"]
    assert refused["outcome"]["error"] == "InvalidInput"

    q = cli_json("audit", "query", "--session", s1, "--limit", "1000", home=home)["records"]
    assert q and all(r["session"] == s1 for r in q)
    assert not any(r.get("session") == other for r in q)
    human = run_cli("audit", "session", s1, home=home).stdout
    assert "system.info approval_required (rule info-review) approval approved" in human
    missing = run_cli("audit", "session", "nope", "--json", home=home, check=False)
    assert missing.returncode == 1 and "no records" in json.loads(missing.stdout)["error"]["message"]

    html = views.session_page({"available": True, **{"session": s1, "calls": calls}}, "csrf")
    assert "info-review" in html and "approved" in html and html.count("<tr>") == 5


def test_old_index_is_rebuilt_with_sessions(tmp_path: Path) -> None:
    """An index written before the session column existed gets it filled, not left empty."""
    audit = tmp_path / "audit"
    write_log(audit, None, per_day=3)
    idx = Index(audit)
    idx.catch_up()
    idx.close()
    conn = sqlite3.connect(audit / "index.db")        # make it look like the old schema
    conn.execute("DROP INDEX records_session")
    conn.execute("ALTER TABLE records DROP COLUMN session")
    conn.commit()
    conn.close()
    idx = Index(audit)
    idx.catch_up()
    recs, bad = sess.load(idx, audit, "rpc")
    idx.close()
    assert len(recs) == 9 and not bad


def test_timeline_is_pure_and_orders_by_first_record() -> None:
    recs = [
        {"seq": 5, "ts": 5, "agent": "a", "session": "s", "capability": "x.run", "call": "c2", "phase": "outcome",
         "decision": {"tier": "notify", "rule": "r"}, "outcome": {"status": "ok"}, "duration_us": 900},
        {"seq": 2, "ts": 2, "agent": "a", "session": "s", "capability": "x.run", "call": "c2", "phase": "decision",
         "decision": {"tier": "notify", "rule": "r"}, "outcome": {"status": "started"}, "duration_us": 10},
        {"seq": 1, "ts": 1, "agent": "a", "session": "s", "capability": "x.get", "call": "c1", "phase": "complete",
         "decision": {"tier": "autonomous", "rule": "g"}, "outcome": {"status": "ok"}, "duration_us": 5},
        {"seq": 3, "ts": 3, "kind": "request.refused", "agent": "a", "session": "s"},
    ]
    t = sess.timeline(recs)
    assert [e.get("call") or e.get("kind") for e in t] == ["c1", "c2", "request.refused"]
    assert t[1]["outcome"] == {"status": "ok"} and t[1]["duration_us"] == 900 and t[1]["seqs"] == [2, 5]
