"""filesystem.* and process.run through the real gateway: `stockade serve`, JSON-RPC /rpc with an
agent key, the policy engine, the audit log and the five-layer sandbox (nothing stubbed).

Needs root and the kernel layers: skips outside CI only (tests/conftest.need).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Server, cli_quick, need, need_root, start_server

pytestmark = pytest.mark.xdist_group("capabilities-e2e")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    home = tmp_path_factory.mktemp("cap-e2e") / "home"
    cli_quick("init", "--policy", "open", home=home)   # setup: in this process
    parent = f"stockade-cap-{os.getpid()}"
    cfg = home / "stockade.yaml"
    text = cfg.read_text()
    if "sandbox:" in text:
        text = text.replace("sandbox:", f"sandbox:\n  cgroup_parent: {parent}", 1)
    else:
        text += f"\nsandbox:\n  cgroup_parent: {parent}\n"
    cfg.write_text(text)
    s = start_server(home, env={"STOCKADE_E2E_CANARY": "gateway-env-must-not-leak"})
    try:
        health = s.invoke(s.agent(f"h{os.getpid()}"), "system.health")
        sb = health.get("result", {}).get("layers", {}).get("sandbox", {})
        need(sb.get("status") in ("ok", "degraded"), f"sandbox not available here: {json.dumps(sb)[:300]}")
        yield s
    finally:
        s.stop()
        _cleanup(home, parent, list(s.keys))


def _cleanup(home: Path, parent: str, names: list[str]) -> None:
    with contextlib.suppress(Exception):
        from stockade.sandbox import agentns
        from stockade.sandbox.cgroups import AgentCgroup, detect

        for n in names:
            with contextlib.suppress(Exception):
                agentns.remove(n, home)
        info = detect()
        for n in names:
            with contextlib.suppress(Exception):
                AgentCgroup(info, parent, n).remove()
        for m in info.v1.values():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(m, parent))


def ok(s: Server, key: str, cap: str, args: dict[str, Any]) -> dict[str, Any]:
    r = s.invoke(key, cap, args)
    assert "result" in r, r
    return r["result"]


def bad(s: Server, key: str, cap: str, args: dict[str, Any]) -> dict[str, Any]:
    r = s.invoke(key, cap, args)
    assert "error" in r, r
    return r["error"]["data"]


def _tree(p: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
        for n in dirnames + filenames:
            f = os.path.join(dirpath, n)
            out[os.path.relpath(f, p)] = os.readlink(f) if os.path.islink(f) else (
                "dir" if os.path.isdir(f) else str(os.lstat(f).st_size))
    return out


def test_write_read_list_stat(gw: Server) -> None:
    key = gw.agent(f"fa{os.getpid()}")
    assert ok(gw, key, "filesystem.write", {"path": "proj/a.txt", "content": "hello"})["created"] is True
    assert ok(gw, key, "filesystem.append", {"path": "proj/a.txt", "content": " world"})["size"] == 11
    assert ok(gw, key, "filesystem.read", {"path": "/workspace/proj/a.txt"})["content"] == "hello world"
    names = [e["path"] for e in ok(gw, key, "filesystem.list", {"recursive": True})["entries"]]
    assert names == ["/workspace/proj", "/workspace/proj/a.txt"]
    st = ok(gw, key, "filesystem.stat", {"path": "proj/a.txt"})
    assert st["type"] == "file" and st["size"] == 11
    host = gw.home / "workspaces" / f"fa{os.getpid()}" / "proj" / "a.txt"
    assert host.read_text() == "hello world"


def test_planted_symlinks_do_not_lead_out(gw: Server) -> None:
    """The agent plants links with process.run (its own shell), then tries to use them."""
    name = f"fb{os.getpid()}"
    key = gw.agent(name)
    r = ok(gw, key, "process.run", {"argv": ["sh", "-c",
                                             "ln -s /etc/shadow shadow; ln -s .. up; ln -s /proc/1/root p1; "
                                             f"ln -s ../../workspaces/fa{os.getpid()} neighbour; echo done"]})
    assert r["stdout"] == "done\n", r
    home_before = _tree(gw.home / "workspaces")
    for path in ["shadow", "up/stockade.yaml", "p1/etc/passwd", "neighbour/proj/a.txt", "../../stockade.yaml"]:
        for cap, args in [("filesystem.read", {"path": path}), ("filesystem.list", {"path": path}),
                          ("filesystem.write", {"path": path + "/x", "content": "x"})]:
            e = bad(gw, key, cap, args)
            assert e["type"] in ("PathDenied", "PolicyDenied", "FileNotFound"), (cap, path, e)
    assert _tree(gw.home / "workspaces") == home_before
    shadow = Path("/etc/shadow").read_bytes()
    ok(gw, key, "filesystem.write", {"path": "shadow", "content": "x"})   # replaces the link itself
    assert Path("/etc/shadow").read_bytes() == shadow
    assert (gw.home / "workspaces" / name / "shadow").read_text() == "x"
    assert "secret" not in json.dumps(ok(gw, key, "filesystem.search_content", {"query": "root:"}))


def test_delete_restore_through_the_trash_mount(gw: Server) -> None:
    name = f"fc{os.getpid()}"
    key = gw.agent(name)
    ok(gw, key, "filesystem.write", {"path": "d/f.txt", "content": "keep me"})
    out = ok(gw, key, "filesystem.delete", {"path": "d", "recursive": True})
    ws = gw.home / "workspaces" / name
    trash = gw.home / "trash" / name / out["trash_id"]
    assert not (ws / "d").exists() and (trash / "item" / "f.txt").read_text() == "keep me"
    assert json.loads((trash / "meta.json").read_text())["original_path"] == "/workspace/d"
    ok(gw, key, "filesystem.restore", {"path": "d"})
    assert (ws / "d" / "f.txt").read_text() == "keep me" and not trash.exists()
    out = ok(gw, key, "filesystem.delete", {"path": "d/f.txt"})
    ok(gw, key, "filesystem.restore", {"path": "d/f.txt", "trash_id": out["trash_id"], "destination": "e/g.txt"})
    assert (ws / "e" / "g.txt").read_text() == "keep me"
    e = bad(gw, key, "filesystem.restore", {"path": "d/f.txt", "destination": "../../escape"})
    assert e["type"] in ("PolicyDenied", "PathDenied")


def test_process_run_in_the_sandbox(gw: Server) -> None:
    key = gw.agent(f"fd{os.getpid()}")
    r = ok(gw, key, "process.run", {"argv": ["sh", "-c", "id -u; pwd; env; exit 7"], "env": {"X": "y"}})
    lines = r["stdout"].splitlines()
    assert r["exit_code"] == 7 and lines[0] == "1100" and lines[1] == "/workspace"
    assert "X=y" in lines and "gateway-env-must-not-leak" not in r["stdout"]
    e = bad(gw, key, "process.run", {"argv": ["sh", "-c", "sleep 60 & sleep 60"], "timeout": 0.5})
    assert e["type"] == "Timeout"
    e = bad(gw, key, "process.run", {"argv": ["no-such-binary"]})
    assert e["type"] == "FileNotFound"
    e = bad(gw, key, "process.run", {"argv": ["true"], "cwd": "../.."})
    assert e["type"] in ("PathDenied", "PolicyDenied")
    e = bad(gw, key, "process.run", {"argv": ["x" * 70000]})
    assert e["type"] == "InvalidInput"
