"""state.* through the real gateway: `stockade serve`, agent keys, policy, the audit log, the
gateway's stockade.db; clients are the `mcp` SDK and raw JSON-RPC (nothing stubbed)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from tests.conftest import Server, cli_quick, quick_json, start_server

pytestmark = pytest.mark.xdist_group("state")

QUOTA = {"max_keys": 8, "max_bytes": 4096, "max_value_bytes": 1024}


def _configure(home: Path, policy: str = "personal") -> None:
    cli_quick("init", "--policy", policy, home=home)   # setup and audit reads: in this process
    with (home / "stockade.yaml").open("a") as f:
        f.write("state:\n" + "".join(f"  {k}: {v}\n" for k, v in QUOTA.items()))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gateway for the module (tests use distinct agent names)."""
    home = tmp_path_factory.mktemp("state") / "home"
    _configure(home)
    s = start_server(home)
    try:
        yield s
    finally:
        s.stop()


def ok(resp: dict[str, Any]) -> dict[str, Any]:
    assert "result" in resp, resp
    return resp["result"]


def error(resp: dict[str, Any], type_: str) -> dict[str, Any]:
    assert "error" in resp, resp
    data = resp["error"]["data"]
    assert data["type"] == type_, resp
    return data


def audit(home: Path, **filters: str) -> list[dict[str, Any]]:
    args = ["audit", "query", "--limit", "10000"]
    for k, v in filters.items():
        args += [f"--{k}", v]
    return quick_json(*args, home=home)["records"]  # type: ignore[no-any-return]


def _mcp(gw: Server, key: str) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{gw.url}/mcp", http_client=http), mode="legacy")


# -- the MCP SDK as the client -----------------------------------------------------------------
def test_mcp_client_sets_gets_lists_and_deletes(gw: Server) -> None:
    key = gw.agent("mcp-agent")

    async def go() -> None:
        async with _mcp(gw, key) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"state__get", "state__set", "state__delete", "state__list"} <= tools
            r = await c.call_tool("state__set", {"key": "plan/step", "value": {"done": [1, 2], "next": 3}})
            assert not r.is_error, r
            v1 = r.structured_content["version"]
            got = (await c.call_tool("state__get", {"key": "plan/step"})).structured_content
            assert got["found"] and got["value"] == {"done": [1, 2], "next": 3} and got["version"] == v1
            r = await c.call_tool("state__set", {"key": "plan/step", "value": 4, "expected_version": v1 + 100})
            assert r.is_error and json.loads(r.content[0].text)["type"] == "Conflict"
            listed = (await c.call_tool("state__list", {"prefix": "plan/"})).structured_content
            assert [k["key"] for k in listed["keys"]] == ["plan/step"] and listed["next_cursor"] is None
            assert listed["usage"]["keys"] == 1 and listed["usage"]["max_keys"] == QUOTA["max_keys"]
            gone = (await c.call_tool("state__delete", {"key": "plan/step", "expected_version": v1})).structured_content
            assert gone == {"key": "plan/step", "deleted": True, "version": v1}
            assert (await c.call_tool("state__get", {"key": "plan/step"})).structured_content == {
                "key": "plan/step", "found": False}

    asyncio.run(go())


def test_every_write_is_audited_with_its_intent_and_outcome(gw: Server) -> None:
    key = gw.agent("audited")
    v = ok(gw.invoke(key, "state.set", {"key": "k", "value": "v1"}))["version"]
    error(gw.invoke(key, "state.set", {"key": "k", "value": "v2", "expected_version": 0}), "Conflict")
    ok(gw.invoke(key, "state.delete", {"key": "k", "expected_version": v}))
    ok(gw.invoke(key, "state.get", {"key": "k"}))
    recs = audit(gw.home, agent="audited")
    sets = [r for r in recs if r.get("capability") == "state.set"]
    phases = sorted((r["phase"], r["outcome"]["status"], r["outcome"].get("error")) for r in sets)
    assert phases == sorted([("decision", "started", None), ("outcome", "ok", None),
                             ("decision", "started", None), ("outcome", "error", "Conflict")])
    assert {r["args"]["value"] for r in sets} == {"v1", "v2"}
    dels = [r for r in recs if r.get("capability") == "state.delete"]
    assert sorted(r["phase"] for r in dels) == ["decision", "outcome"]
    assert cli_quick("audit", "verify", home=gw.home).returncode == 0


def test_personal_template_runs_state_without_asking(gw: Server) -> None:
    key = gw.agent("tiers")
    caps = {c["name"]: c["tier"] for c in ok(gw.invoke(key, "agent.capabilities"))["capabilities"]}
    assert {n: caps[n] for n in ("state.get", "state.set", "state.delete", "state.list")} == dict.fromkeys(
        ("state.get", "state.set", "state.delete", "state.list"), "autonomous")


# -- compare-and-set under real concurrent calls ---------------------------------------------
async def _rpc(c: httpx.AsyncClient, url: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke", "params": {"name": name, "arguments": args}}
    return (await c.post(url, json=body, timeout=60)).json()  # type: ignore[no-any-return]


def test_concurrent_create_only_has_exactly_one_winner(gw: Server) -> None:
    key = gw.agent("racer")

    async def go() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as c:
            return list(await asyncio.gather(*(
                _rpc(c, f"{gw.url}/rpc", "state.set", {"key": "leader", "value": i, "expected_version": 0})
                for i in range(12))))

    out = asyncio.run(go())
    winners = [i for i, r in enumerate(out) if "result" in r]
    assert len(winners) == 1, out
    assert all(error(r, "Conflict")["current_version"] == out[winners[0]]["result"]["version"]
               for r in out if "error" in r)
    assert ok(gw.invoke(key, "state.get", {"key": "leader"}))["value"] == winners[0]


def test_concurrent_increments_by_compare_and_set_lose_nothing(gw: Server) -> None:
    key = gw.agent("counter")
    ok(gw.invoke(key, "state.set", {"key": "n", "value": 0}))
    workers, per = 6, 8

    async def worker(c: httpx.AsyncClient) -> int:
        done = conflicts = 0
        while done < per:
            cur = (await _rpc(c, f"{gw.url}/rpc", "state.get", {"key": "n"}))["result"]
            r = await _rpc(c, f"{gw.url}/rpc", "state.set",
                           {"key": "n", "value": cur["value"] + 1, "expected_version": cur["version"]})
            if "result" in r:
                done += 1
            else:
                assert r["error"]["data"]["type"] == "Conflict", r
                conflicts += 1
        return conflicts

    async def go() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                     limits=httpx.Limits(max_connections=workers)) as c:
            await asyncio.gather(*(worker(c) for _ in range(workers)))

    asyncio.run(go())
    assert ok(gw.invoke(key, "state.get", {"key": "n"}))["value"] == workers * per


# -- TTL ---------------------------------------------------------------------------------------
def test_a_key_with_a_ttl_disappears(gw: Server) -> None:
    key = gw.agent("ttl")
    first = ok(gw.invoke(key, "state.set", {"key": "tmp", "value": "short", "ttl_seconds": 0.5}))
    assert first["expires_at"] is not None
    ok(gw.invoke(key, "state.set", {"key": "keep", "value": "long"}))
    deadline = time.monotonic() + 30
    while ok(gw.invoke(key, "state.get", {"key": "tmp"}))["found"]:
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.1)
    listed = ok(gw.invoke(key, "state.list"))
    assert [k["key"] for k in listed["keys"]] == ["keep"] and listed["usage"]["keys"] == 1
    again = ok(gw.invoke(key, "state.set", {"key": "tmp", "value": "new", "expected_version": 0}))
    assert again["version"] > first["version"] and again["expires_at"] is None
    raw = sqlite3.connect(gw.home / "stockade.db")   # the write deleted the expired row (lazy cleanup)
    assert raw.execute("SELECT value FROM state_kv WHERE agent='ttl' AND key='tmp'").fetchall() == [('"new"',)]


def test_values_live_in_the_gateways_wal_database_keyed_by_the_caller(gw: Server) -> None:
    """Stored in stockade.db (SQLite in WAL mode), under the authenticated agent's name."""
    key = gw.agent("walker")
    ok(gw.invoke(key, "state.set", {"key": "where", "value": {"in": "the gateway"}}))
    raw = sqlite3.connect(f"file:{gw.home / 'stockade.db'}?mode=ro", uri=True)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = raw.execute("SELECT agent FROM state_kv WHERE key='where'").fetchall()
    finally:
        raw.close()
    assert rows == [("walker",)], rows


# -- limits and quotas -------------------------------------------------------------------------
def test_key_quota_is_exceeded_with_a_clear_error(gw: Server) -> None:
    key = gw.agent("hoarder")
    for i in range(QUOTA["max_keys"]):
        ok(gw.invoke(key, "state.set", {"key": f"k{i}", "value": i}))
    resp = gw.invoke(key, "state.set", {"key": "one-more", "value": 1})
    data = error(resp, "QuotaExceeded")
    assert data["quota"] == "keys" and data["limit"] == QUOTA["max_keys"]
    assert data["recovery"] and resp["error"]["code"] == -32010
    ok(gw.invoke(key, "state.set", {"key": "k0", "value": "replacing is fine"}))
    assert not ok(gw.invoke(key, "state.get", {"key": "one-more"}))["found"]
    ok(gw.invoke(key, "state.delete", {"key": "k1"}))
    ok(gw.invoke(key, "state.set", {"key": "one-more", "value": 1}))
    ok(gw.invoke(gw.agent("neighbour"), "state.set", {"key": "k0", "value": 0}))   # quotas are per agent


def test_bytes_quota_is_exceeded_with_a_clear_error(gw: Server) -> None:
    key = gw.agent("big-writer")
    chunk = "x" * (QUOTA["max_value_bytes"] - 2)          # a value of exactly max_value_bytes
    for i in range(3):
        assert ok(gw.invoke(key, "state.set", {"key": f"b{i}", "value": chunk}))["bytes"] == 2 + 1024
    data = error(gw.invoke(key, "state.set", {"key": "b3", "value": chunk}), "QuotaExceeded")
    assert data["quota"] == "bytes" and data["limit"] == QUOTA["max_bytes"]
    usage = ok(gw.invoke(key, "state.list"))["usage"]
    assert usage["keys"] == 3 and usage["bytes"] == 3 * 1026


def test_oversize_and_too_deep_values_are_refused_and_nothing_changes(gw: Server) -> None:
    key = gw.agent("oversize")
    ok(gw.invoke(key, "state.set", {"key": "k", "value": "small"}))
    big = error(gw.invoke(key, "state.set", {"key": "k", "value": "é" * 600}), "InvalidInput")
    assert big["reason"] == "too_large" and big["bytes"] == 1202 and big["max_value_bytes"] == 1024
    deep: Any = 0
    for _ in range(40):
        deep = [deep]
    assert error(gw.invoke(key, "state.set", {"key": "k", "value": deep}), "InvalidInput")["reason"] == "depth"
    got = ok(gw.invoke(key, "state.get", {"key": "k"}))
    assert got["value"] == "small"


# -- isolation ---------------------------------------------------------------------------------
def test_another_agent_cannot_see_or_name_the_keys(gw: Server) -> None:
    alice, mallory = gw.agent("alice"), gw.agent("mallory")
    ok(gw.invoke(alice, "state.set", {"key": "diary", "value": "alice's secret"}))
    assert ok(gw.invoke(mallory, "state.get", {"key": "diary"})) == {"key": "diary", "found": False}
    assert ok(gw.invoke(mallory, "state.list"))["keys"] == []
    assert ok(gw.invoke(mallory, "state.delete", {"key": "diary"}))["deleted"] is False
    error(gw.invoke(mallory, "state.set", {"key": "diary", "value": "x", "expected_version": 1}), "Conflict")
    for trick in ({"key": "diary", "agent": "alice"}, {"key": "diary", "agent_name": "alice"},
                  {"key": "diary", "target_agent": "alice"}, {"key": "alice/diary", "agent": "alice"}):
        error(gw.invoke(mallory, "state.get", trick), "InvalidInput")
    for name in ("alice:diary", "alice/diary", "../alice/diary", "alice.diary"):
        assert not ok(gw.invoke(mallory, "state.get", {"key": name}))["found"]
    page = ok(gw.invoke(alice, "state.list"))   # a cursor is only ever a key of the caller's own
    forged = "c1.ZGlhcnk"                      # "diary", alice's key, encoded as a cursor
    assert ok(gw.invoke(mallory, "state.list", {"cursor": forged}))["keys"] == []
    assert page["keys"][0]["key"] == "diary"
    got = ok(gw.invoke(alice, "state.get", {"key": "diary"}))
    assert got["value"] == "alice's secret"


# -- bad input -------------------------------------------------------------------------------------
BAD = [
    ("state.get", {}),
    ("state.get", {"key": ""}),
    ("state.get", {"key": "a b"}),
    ("state.get", {"key": "a\n"}),
    ("state.get", {"key": "ключ"}),
    ("state.get", {"key": "x" * 257}),
    ("state.get", {"key": 5}),
    ("state.get", {"key": ["a"]}),
    ("state.set", {"key": "k"}),
    ("state.set", {"key": "k", "value": 1, "expected_version": "1"}),
    ("state.set", {"key": "k", "value": 1, "expected_version": -1}),
    ("state.set", {"key": "k", "value": 1, "expected_version": 1.5}),
    ("state.set", {"key": "k", "value": 1, "ttl_seconds": 0}),
    ("state.set", {"key": "k", "value": 1, "ttl_seconds": -5}),
    ("state.set", {"key": "k", "value": 1, "ttl_seconds": "60"}),
    ("state.set", {"key": "k", "value": 1, "ttl_seconds": 1e12}),
    ("state.set", {"key": "k", "value": 1, "extra": True}),
    ("state.delete", {"key": "k", "expected_version": True}),
    ("state.list", {"limit": 0}),
    ("state.list", {"limit": 1001}),
    ("state.list", {"prefix": "a b"}),
    ("state.list", {"cursor": "not-a-cursor"}),
    ("state.list", {"cursor": "c1.YSBi"}),
]


def test_bad_input_gets_a_structured_error_and_changes_nothing(gw: Server) -> None:
    key = gw.agent("fuzzer")
    before = ok(gw.invoke(key, "state.set", {"key": "k", "value": "kept"}))
    for i, (cap, args) in enumerate(BAD):
        who = key if i < 20 else gw.agent("fuzzer-b")   # stay under the failure budget (30 refusals)
        resp = gw.invoke(who, cap, args)
        data = error(resp, "InvalidInput")
        assert resp["error"]["code"] == -32602 and data["message"] and data["recovery"], (cap, args, resp)
    got = ok(gw.invoke(key, "state.get", {"key": "k"}))
    assert (got["value"], got["version"]) == ("kept", before["version"])
    assert ok(gw.invoke(key, "state.list"))["usage"]["keys"] == 1


# -- restart -----------------------------------------------------------------------------------------
def test_state_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _configure(home)
    s = start_server(home)
    try:
        key = s.agent("durable")
        v = ok(s.invoke(key, "state.set", {"key": "memo", "value": {"todo": ["a", "b"]}}))["version"]
        ok(s.invoke(key, "state.set", {"key": "later", "value": 1, "ttl_seconds": 3600}))
    finally:
        assert s.stop() == 0
    s = start_server(home)
    try:
        s.keys["durable"] = key
        got = ok(s.invoke(key, "state.get", {"key": "memo"}))
        assert got["value"] == {"todo": ["a", "b"]} and got["version"] == v
        assert [k["key"] for k in ok(s.invoke(key, "state.list"))["keys"]] == ["later", "memo"]
        nxt = ok(s.invoke(key, "state.set", {"key": "memo", "value": "done", "expected_version": v}))
        assert nxt["version"] > v
    finally:
        s.stop()
