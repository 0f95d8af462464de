"""A workspace of the owner's (issue 18): `sandbox.workspace` in the agent's policy file points
/workspace at a directory outside the data home, checked first, and what the agent writes there is
readable and editable by the owner's own account without root (POSIX ACLs, inherited by default),
through the real gateway and sandbox."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from tests.conftest import cli_quick, need_root, run_cli, start_server

from stockade.capabilities import workspace
from stockade.core.errors import StockadeError

OWNER, STRANGER = 4242, 4343


def as_uid(uid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, user=uid, group=uid, extra_groups=[],
                          timeout=30)


# -- pure parts ---------------------------------------------------------------------------------
def test_acl_encoding_is_the_kernel_format() -> None:
    raw = workspace.acl_xattr([100001, 4242], 6, 0o754)
    ver, rest = struct.unpack("<I", raw[:4])[0], raw[4:]
    entries = [struct.unpack("<HHI", rest[i:i + 8]) for i in range(0, len(rest), 8)]
    assert ver == 2
    assert entries == [(1, 7, 0xFFFFFFFF), (2, 6, 4242), (2, 6, 100001), (4, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
                       (0x20, 4, 0xFFFFFFFF)]


@pytest.mark.parametrize("bad", ["/", "/etc", "/usr/lib", "/var", "relative/path", "/home"])
def test_system_places_are_refused(bad: str) -> None:
    with pytest.raises(StockadeError):
        workspace.check(bad, Path("/var/lib/stockade"))


def test_data_home_either_way_symlinks_and_missing_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "workspaces").mkdir(parents=True)
    ok = tmp_path / "repo"
    ok.mkdir()
    (tmp_path / "link").symlink_to(ok)
    for bad in (str(home / "workspaces"), str(tmp_path), str(tmp_path / "link"), str(tmp_path / "missing")):
        with pytest.raises(StockadeError):
            workspace.check(bad, home)
    assert workspace.check(str(ok), home).path == ok


# -- through the gateway ------------------------------------------------------------------------
def test_owner_reads_and_edits_what_the_agent_writes(tmp_path: Path) -> None:
    need_root()
    home = tmp_path / "home"
    cli_quick("init", home=home)   # setup: in this process
    (home / "policies" / "org.yaml").write_text("version: 1\ndefault: autonomous\nrules: []\n")
    # Outside pytest's 0700 tmp tree, so the owner's account can reach it, as a real repository.
    base = Path(tempfile.mkdtemp(prefix="stockade-ws-", dir="/var/tmp"))
    base.chmod(0o755)
    repo = base / "repo"
    repo.mkdir(mode=0o755)
    (repo / "notes.md").write_text("owner's notes\n")
    for p in (repo, repo / "notes.md"):
        os.chown(p, OWNER, OWNER)
    (home / "policies" / "agents" / "coder.yaml").write_text(
        f"version: 1\nsandbox:\n  workspace: {repo}\n  workspace_owner: {OWNER}\n")
    srv = start_server(home)
    try:
        key = srv.agent("coder")
        r = srv.invoke(key, "filesystem.write", {"path": "/workspace/src/new.py", "content": "print('hi')\n"})
        assert "result" in r, r
        r = srv.invoke(key, "filesystem.append", {"path": "/workspace/notes.md", "content": "agent was here\n"})
        assert "result" in r, r                              # the owner's existing file is editable
    finally:
        srv.stop()
    new = repo / "src" / "new.py"
    assert new.stat().st_uid not in (0, OWNER)            # written by the agent's sandbox uid
    assert as_uid(OWNER, "cat", str(new)).stdout == "print('hi')\n"
    assert as_uid(OWNER, "sh", "-c", f"echo '# reviewed' >> {new}").returncode == 0
    assert as_uid(OWNER, "touch", str(repo / "src" / "owner.txt")).returncode == 0
    assert (repo / "notes.md").read_text() == "owner's notes\nagent was here\n"
    assert (repo / "notes.md").stat().st_mode & 0o777 == 0o664     # not made executable; the mask shows as group
    # Control: an account that is neither cannot change it (the ACL, not loose modes, lets the owner in).
    assert as_uid(STRANGER, "sh", "-c", f"echo x >> {new}").returncode != 0
    shutil.rmtree(base)


def test_a_workspace_inside_the_data_home_is_refused_at_call_time(tmp_path: Path) -> None:
    need_root()
    home = tmp_path / "home"
    cli_quick("init", home=home)   # setup: in this process
    (home / "policies" / "org.yaml").write_text("version: 1\ndefault: autonomous\nrules: []\n")
    (home / "policies" / "agents" / "coder.yaml").write_text(
        f"version: 1\nsandbox:\n  workspace: {home / 'keys'}\n")
    srv = start_server(home)
    try:
        r = srv.invoke(srv.agent("coder"), "filesystem.write", {"path": "/workspace/x", "content": "x"})
        assert r["error"]["data"]["type"] == "SandboxUnavailable" and "data home" in r["error"]["message"], r
    finally:
        srv.stop()
    p = run_cli("policy", "validate", str(home / "policies" / "agents" / "coder.yaml"), home=home, check=False)
    bad = home / "policies" / "agents" / "root.yaml"
    bad.write_text("version: 1\nsandbox:\n  workspace: /\n")
    p = run_cli("policy", "validate", str(bad), home=home, check=False)
    assert p.returncode == 1 and "workspace must be an absolute path other than /" in p.stderr
