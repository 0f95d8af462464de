"""A Streamable HTTP upstream (issue 20): an MCP server already running on loopback, declared by
URL, fronted by a real `stockade serve` and driven by the `mcp` SDK as the agent.

The server is tests/upstream/http_server.py (the SDK's MCPServer over streamable-http), run by the
test servers' own Python outside stockade. Its calls go through the pipeline like any tool:
listing, a call audited once (read-only) or twice (side effect), a policy block, an approval,
the vault header disclosed to that server and redacted in what the agent gets back, the output
bound; the server stopped gives a structured error, and the session comes back with it.
"""

from __future__ import annotations

import asyncio
import json
import socket
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
from tests.conftest import Server, cli_json, need, run_cli, start_server
from tests.supervision.helpers import Call, audit_records, wait_pending

pytestmark = pytest.mark.xdist_group("upstream-http")

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".test-servers" / "py" / "bin" / "python"
HTTP_SERVER = Path(__file__).resolve().parent / "http_server.py"
ORG = """\
version: 1
default: approval_required
rules:
  - {id: sys, capability: "system.*", tier: autonomous}
  - {id: echo, capability: notes.echo, tier: autonomous}
  - {id: auth, capability: notes.auth, tier: autonomous}
  - {id: big, capability: notes.big, tier: autonomous}
  - {id: no-spam, capability: notes.note, tier: blocked, reason: no spam, when: {arg_equals: {text: spam}}}
  - {id: upstream-reads, capability: "*", tier: notify, when: {read_only_hint: true}}
  - {id: grow, capability: "notes.grow", tier: autonomous}
  - {id: grown, capability: "notes.fresh_tool", tier: autonomous}
"""
VAULT_PW = "http upstream test passphrase"
TOKEN = "HTTP-UPSTREAM-CANARY-4d1c9e77a2"


class Notes:
    """The HTTP server process (started, stopped and started again on the same port)."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(PYTHON), str(HTTP_SERVER), str(self.port)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the HTTP server did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notes]:
    need(PYTHON.exists(), "the upstream test servers are not installed (make test installs them)")
    n = Notes(_free_port(), tmp_path_factory.mktemp("notes") / "server.log")
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def gw(notes: Notes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("upstream-http") / "home"
    run_cli("init", home=home)
    (home / "policies" / "org.yaml").write_text(ORG)
    servers = {"notes": {"url": f"http://127.0.0.1:{notes.port}/mcp", "max_output_bytes": 4096, "timeout": 30,
                         "headers": {"Authorization": "Bearer ${secret:notes_token}"}}}
    (home / "upstream.yaml").write_text(yaml.safe_dump({"servers": servers}))
    vault = {"STOCKADE_VAULT_PASSPHRASE": VAULT_PW}
    cli_json("vault", "init", home=home, env=vault)
    cli_json("vault", "set", "notes_token", "--all-agents", "--scope", "upstream.notes", home=home, env=vault,
             input=TOKEN)
    s = start_server(home, timeout=120)
    try:
        run_cli("vault", "unseal", home=home, env=vault)
        yield s
    finally:
        s.stop()


def _client(s: Server, key: str) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{s.url}/mcp", http_client=http), mode="legacy")


def _call(s: Server, key: str, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, structured result or the error object) of one MCP tools/call through stockade."""
    async def go() -> Any:
        async with _client(s, key) as c:
            return await c.call_tool(tool, args)

    r = asyncio.run(go())
    if r.is_error:
        return True, json.loads(r.content[0].text)
    return False, r.structured_content


def _text(result: dict[str, Any]) -> str:
    return "\n".join(c.get("text", "") for c in result["content"])


def _health(gw: Server) -> dict[str, Any]:
    return gw.invoke(gw.agent("alice"), "system.health")["result"]["layers"]["upstream"]


def test_tools_are_listed_namespaced(gw: Server) -> None:
    async def go() -> dict[str, Any]:
        async with _client(gw, gw.agent("alice")) as c:
            return {t.name: t for t in (await c.list_tools()).tools}

    tools = asyncio.run(go())
    assert {"notes__echo", "notes__note", "notes__auth", "notes__big"} <= set(tools), (sorted(tools), _health(gw))
    assert tools["notes__echo"].input_schema["required"] == ["text"]


def test_calls_go_through_the_pipeline_and_are_audited(gw: Server) -> None:
    key = gw.agent("alice")
    bad, out = _call(gw, key, "notes__echo", {"text": "hello"})
    assert not bad and _text(out) == "hello", out
    recs = [r for r in audit_records(gw.home) if r.get("capability") == "notes.echo"]
    assert recs[-1]["phase"] == "complete" and recs[-1]["decision"]["rule"] == "echo", recs   # read-only: once
    bad, e = _call(gw, key, "notes__echo", {"text": 5})
    assert bad and e["type"] == "InvalidInput", e            # refused by its schema, never sent
    bad, e = _call(gw, key, "notes__note", {"text": "spam"})
    assert bad and e["type"] == "PolicyDenied" and e["rule"] == "no-spam", e


def test_a_write_tool_waits_for_the_owner_and_records_both_phases(gw: Server) -> None:
    c = Call(gw, gw.agent("carol"), "notes.note", {"text": "buy milk"})
    c.start()
    a = wait_pending(gw.home)
    assert a["capability"] == "notes.note"
    cli_json("approvals", "approve", a["approval"], home=gw.home)
    r = c.result()
    assert "result" in r and _text(r["result"]).startswith("noted"), r
    recs = [r for r in audit_records(gw.home) if r.get("capability") == "notes.note" and r.get("args")
            == {"text": "buy milk"}]
    phases = [r.get("phase") for r in recs if r.get("phase") in ("decision", "outcome")]
    assert phases[-2:] == ["decision", "outcome"], recs


def test_the_vault_header_reaches_that_server_and_never_the_agent(gw: Server) -> None:
    bad, out = _call(gw, gw.agent("alice"), "notes__auth", {})
    assert not bad, out
    # The server answers the header it got; stockade put the secret there and scrubs it on the way back.
    assert _text(out) == "Bearer ${secret:notes_token}", out
    assert TOKEN not in json.dumps(out)
    assert TOKEN not in json.dumps(audit_records(gw.home))


def test_output_is_bounded(gw: Server) -> None:
    key = gw.agent("alice")
    bad, e = _call(gw, key, "notes__big", {"size": 20000})       # over max_output_bytes (4096)
    assert bad and e["type"] == "ResourceExhausted", e
    # over the bound the gateway reads at all (2 x 4096 + 64 KiB): the session is dropped, then reopened
    bad, e = _call(gw, key, "notes__big", {"size": 100_000})
    assert bad and e["type"] == "ResourceExhausted" and "dropped" in e["message"], e
    bad, out = _call(gw, key, "notes__echo", {"text": "again"})
    assert not bad and _text(out) == "again", out


def test_server_gone_is_a_structured_error_and_its_return_is_seen(gw: Server, notes: Notes) -> None:
    key = gw.agent("alice")
    assert not _call(gw, key, "notes__echo", {"text": "up"})[0]
    assert _health(gw)["servers"]["notes"]["kind"] == "url"
    listed = cli_json("upstream", "list", home=gw.home)["servers"]
    assert listed[0]["command"] == f"http://127.0.0.1:{notes.port}/mcp", listed
    notes.stop()
    try:
        bad, e = _call(gw, key, "notes__echo", {"text": "down"})
        assert bad and e["type"] in ("Unreachable", "SandboxUnavailable"), e
    finally:
        notes.start()
    deadline = time.monotonic() + 90          # reconnect backoff: 1 s doubling, polled
    while True:
        bad, out = _call(gw, key, "notes__echo", {"text": "back"})
        if not bad:
            break
        assert time.monotonic() < deadline, (out, _health(gw))
        time.sleep(0.5)
    assert _text(out) == "back"


def test_a_url_off_loopback_or_mixed_with_command_options_is_refused(gw: Server) -> None:
    before = (gw.home / "upstream.yaml").read_text()
    for args in (["--url", "http://192.0.2.1:8080/mcp"], ["--url", "http://user:pw@127.0.0.1:1/mcp"],
                 ["--url", "ftp://127.0.0.1/mcp"], ["--url", "http://127.0.0.1:1/mcp", "--env", "A=b"],
                 ["--url", "http://127.0.0.1:1/mcp", "--header", "Host=evil"]):
        p = run_cli("upstream", "add", "other", *args, "--json", home=gw.home, check=False)
        assert p.returncode != 0 and json.loads(p.stdout)["error"], (args, p.stdout, p.stderr)
    assert (gw.home / "upstream.yaml").read_text() == before


def test_a_read_only_tool_defaults_lower_than_a_writing_one(gw: Server) -> None:
    """No rule names notes.peek or notes.note: the server's readOnlyHint brings peek to notify by
    the policy's upstream-reads rule; note stays at the default, approval_required."""
    bad, out = _call(gw, gw.agent("alice"), "notes__peek", {})
    assert not bad, out
    rec = [r for r in audit_records(gw.home) if r.get("capability") == "notes.peek"][-1]
    assert rec["decision"]["rule"] == "upstream-reads" and rec["decision"]["tier"] == "notify", rec
    peek = cli_json("policy", "explain", "--agent", "alice", "--capability", "notes.peek", "--args", "{}",
                    home=gw.home)
    assert peek["tier"] == "notify" and peek["rule"] == "upstream-reads", peek
    note = cli_json("policy", "explain", "--agent", "alice", "--capability", "notes.note", "--args",
                    '{"text": "x"}', home=gw.home)
    assert note["tier"] == "approval_required" and note["layer"] == "default", note


def test_a_tool_list_change_reaches_the_registry(gw: Server) -> None:
    """The server says its list changed over the HTTP session: the list is read again, agents see
    the new tool, and the change is audited."""
    key = gw.agent("hal")
    bad, out = _call(gw, key, "notes__grow", {"name": "fresh_tool"})
    assert not bad and _text(out) == "added", out

    async def names() -> set[str]:
        async with _client(gw, key) as c:
            return {t.name for t in (await c.list_tools()).tools}

    deadline = time.monotonic() + 60
    while "notes__fresh_tool" not in asyncio.run(names()):
        assert time.monotonic() < deadline, _health(gw)
        time.sleep(0.5)
    bad, out = _call(gw, key, "notes__fresh_tool", {})
    assert not bad and _text(out) == "grown", out
    changed = [r for r in audit_records(gw.home) if r.get("kind") == "upstream.tools_changed"]
    assert changed and "notes.fresh_tool" in changed[-1]["added"], changed
