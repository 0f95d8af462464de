"""docs/clients.md as written (issue 18: fencing Claude Code and Codex): every config block
parses, denies the built-in tools, and the stdio bridge it configures works when started exactly
as the client starts it (command, args, env), driven by the `mcp` SDK through a real gateway."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from tests.conftest import Server

DOC = (Path(__file__).resolve().parents[2] / "docs" / "clients.md").read_text()
BUILTIN = {"Bash", "Edit", "MultiEdit", "Write", "Read", "Glob", "Grep", "LS", "NotebookEdit", "WebFetch",
           "WebSearch", "Task", "Agent"}


def block(name: str) -> str:
    m = re.search(rf"<!-- clients-test: {name} -->\n```\w+\n(.*?)```", DOC, re.S)
    assert m, f"docs/clients.md has no block {name}"
    return m.group(1)


def test_claude_code_settings_deny_every_builtin_tool() -> None:
    s = json.loads(block("claude-settings"))
    assert set(s["permissions"]["deny"]) >= BUILTIN
    assert s["permissions"]["allow"] == ["mcp__stockade"] and s["enabledMcpjsonServers"] == ["stockade"]


def test_codex_config_switches_the_shell_off() -> None:
    c = tomllib.loads(block("codex"))
    assert c["features"]["shell_tool"] is False and c["features"]["web_search_request"] is False
    assert c["sandbox_mode"] == "read-only"
    srv = c["mcp_servers"]["stockade"]
    assert srv["args"][0] == "connect" and set(srv["env"]) == {"STOCKADE_AGENT_KEY"}


def _as_started(cfg: dict[str, Any], server: Server, key: str) -> StdioServerParameters:
    """The config's command line with this machine's stockade, gateway URL and key put in."""
    args = [a.replace("http://127.0.0.1:7700", server.url) for a in cfg["args"]]
    assert Path(cfg["command"]).name == "stockade"
    env = {**{k: key for k in cfg["env"]}, "PATH": "/usr/bin:/bin"}
    return StdioServerParameters(command=sys.executable, args=["-m", "stockade", *args], env=env)


def _drive(params: StdioServerParameters, agent: str) -> None:
    async def go() -> None:
        async with Client(params, mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"system__time", "agent__capabilities"} <= names
            who = (await c.call_tool("agent__whoami", {})).structured_content
            assert who["agent"] == agent

    asyncio.run(go())


def test_both_clients_bridges_work_as_configured(server: Server) -> None:
    claude = json.loads(block("claude-mcp"))["mcpServers"]["stockade"]
    assert claude["type"] == "stdio"
    _drive(_as_started(claude, server, server.agent("claude")), "claude")
    codex = tomllib.loads(block("codex"))["mcp_servers"]["stockade"]
    _drive(_as_started(codex, server, server.agent("codex")), "codex")
