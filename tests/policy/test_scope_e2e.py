"""Issue 14 item 1 through the real gateway (`stockade serve`, JSON-RPC, policy, sandbox): a rule
blocking `filesystem.*` that touches /workspace/secret also stops searches and recursive listings
of an ancestor, and with the path left out; the secret file's lines never come back.

Needs root and the kernel layers: skips outside CI only (tests/conftest.need)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from tests.capabilities.test_e2e_gateway import _cleanup
from tests.conftest import Server, cli_quick, need, need_root, start_server

pytestmark = pytest.mark.xdist_group("capabilities-e2e")

ORG = """\
version: 1
default: autonomous
rules:
  - {id: secret, capability: "filesystem.*", tier: blocked, when: {path_touches: [/workspace/secret]}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    home = tmp_path_factory.mktemp("scope-e2e") / "home"
    cli_quick("init", "--policy", "open", home=home)   # setup: in this process
    (home / "policies" / "org.yaml").write_text(ORG)
    parent = f"stockade-scope-{os.getpid()}"
    cfg = home / "stockade.yaml"
    text = cfg.read_text()
    text = text.replace("sandbox:", f"sandbox:\n  cgroup_parent: {parent}", 1) if "sandbox:" in text else \
        text + f"\nsandbox:\n  cgroup_parent: {parent}\n"
    cfg.write_text(text)
    s = start_server(home)
    try:
        health = s.invoke(s.agent(f"h{os.getpid()}"), "system.health")
        sb = health.get("result", {}).get("layers", {}).get("sandbox", {})
        need(sb.get("status") in ("ok", "degraded"), f"sandbox not available here: {json.dumps(sb)[:300]}")
        yield s
    finally:
        s.stop()
        _cleanup(home, parent, list(s.keys))


def _call(s: Server, key: str, cap: str, args: dict[str, Any]) -> dict[str, Any]:
    return s.invoke(key, cap, args)


def _blocked(r: dict[str, Any]) -> bool:
    return "error" in r and r["error"].get("data", {}).get("type") == "PolicyDenied"


def test_searching_an_ancestor_does_not_reveal_the_secret(gw: Server) -> None:
    name = f"sc{os.getpid()}"
    key = gw.agent(name)
    assert "result" in _call(gw, key, "filesystem.write", {"path": "public/a.txt", "content": "password=public\n"})
    # the secret exists in the workspace (the owner put it there; the agent cannot write it)
    assert _blocked(_call(gw, key, "filesystem.write", {"path": "secret/key.txt", "content": "x"}))
    ws = gw.home / "workspaces" / name
    (ws / "secret").mkdir()
    (ws / "secret" / "key.txt").write_text("password=hunter2\n")
    st = os.stat(ws / "public")
    for p in (ws / "secret", ws / "secret" / "key.txt"):
        os.chown(p, st.st_uid, st.st_gid)
    assert _blocked(_call(gw, key, "filesystem.read", {"path": "secret/key.txt"}))
    for args in ({"query": "password"}, {"query": "password", "path": "/workspace"},
                 {"query": "password", "path": "."}):
        r = _call(gw, key, "filesystem.search_content", args)
        assert _blocked(r), (args, r)
        assert "hunter2" not in json.dumps(r)
    assert _blocked(_call(gw, key, "filesystem.list", {"recursive": True}))
    assert _blocked(_call(gw, key, "filesystem.search", {"pattern": "*.txt"}))
    assert _blocked(_call(gw, key, "filesystem.copy", {"source": "/workspace", "destination": "/tmp/w",
                                                       "recursive": True}))
    # beside the secret, everything still works
    r = _call(gw, key, "filesystem.search_content", {"query": "password", "path": "/workspace/public"})
    assert "result" in r and "public" in json.dumps(r["result"]) and "hunter2" not in json.dumps(r), r
    r = _call(gw, key, "filesystem.list", {})
    assert "result" in r, r
