"""A signed pack whose entry is an MCP server (issue 20): `pack: NAME` in upstream.yaml runs it in
its long-lived sandbox, verified before each start from the bytes it executes.

The pack is tests/upstream/tiny_server.py as `src/server.py` with `mcp_server: {entry:
server:main}`, signed, trusted and installed by the CLI. Its tool is listed and called through the
pipeline; then a byte of the installed store is changed and the server restarted: the next start
refuses it (PackSignatureInvalid naming the file) and nothing of the changed file runs; restored,
it starts again. Needs root and the kernel layers.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tests.conftest import cli_json, cli_quick, need, need_root, quick_json, start_server

pytestmark = pytest.mark.xdist_group("upstream-pack")

TINY = Path(__file__).resolve().parent / "tiny_server.py"
PACK_YAML = """\
name: tinypack
version: 1.0.0
publisher: tester
mcp_server: {entry: "server:main"}
"""
ORG = """\
version: 1
default: approval_required
rules:
  - {id: sys, capability: "system.*", tier: autonomous}
  - {id: tiny, capability: "tinypack.*", tier: autonomous}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    base = tmp_path_factory.mktemp("upstream-pack")
    home = base / "home"
    quick_json("init", home=home)
    (home / "policies" / "org.yaml").write_text(ORG)
    pack = base / "tinypack"
    (pack / "src").mkdir(parents=True)
    (pack / "pack.yaml").write_text(PACK_YAML)
    shutil.copy(TINY, pack / "src" / "server.py")
    keys = quick_json("pack", "keygen", "--out", str(base / "pub"))
    quick_json("pack", "trust", keys["pub"], "--name", "tester", home=home)
    quick_json("pack", "sign", str(pack), "--key", keys["key"])
    quick_json("pack", "install", str(pack), home=home)
    (home / "upstream.yaml").write_text(yaml.safe_dump({"servers": {"tinypack": {"pack": "tinypack"}}}))
    s = start_server(home, timeout=120)
    try:
        yield SimpleNamespace(srv=s, home=home, key=s.agent("alice"), store=home / "packs" / "tinypack" / "1.0.0")
    finally:
        s.stop()


def _ping(w: SimpleNamespace) -> dict:
    return w.srv.invoke(w.key, "tinypack.ping")


def test_a_packs_server_runs_confined_behind_the_pipeline(world: SimpleNamespace) -> None:
    r = _ping(world)
    assert "result" in r and r["result"]["content"][0]["text"] == "pong", r
    inst = world.srv.invoke(world.key, "system.health")["result"]["layers"]["upstream"]["servers"]["tinypack"]
    assert inst["instances"]["alice"]["state"] == "running", inst


def test_a_changed_store_is_refused_at_the_next_start(world: SimpleNamespace) -> None:
    assert "result" in _ping(world)
    f = world.store / "src" / "server.py"
    good = f.read_bytes()
    os.chmod(f, 0o644)
    try:
        f.write_bytes(good.replace(b'"pong"', b'"PWNED"'))
        cli_json("upstream", "restart", "tinypack", home=world.home)
        r = _ping(world)
        assert r.get("error", {}).get("data", {}).get("type") == "PackSignatureInvalid", r
        assert "src/server.py" in r["error"]["message"], r
    finally:
        f.write_bytes(good)
        os.chmod(f, 0o444)
    cli_json("upstream", "restart", "tinypack", home=world.home)
    deadline = time.monotonic() + 60
    while "result" not in (r := _ping(world)):      # a failed start may be in its backoff
        assert time.monotonic() < deadline, r
        time.sleep(0.5)
    assert r["result"]["content"][0]["text"] == "pong", r


def test_a_pack_cannot_take_a_declared_upstream_servers_name(tmp_path: Path) -> None:
    """`tools of upstream clock are clock.*`: a pack named clock would inherit every rule written for
    them; a server that runs the pack itself (pack: tinypack) does not reserve its name."""
    home = tmp_path / "home"
    quick_json("init", home=home)
    servers = {"clock": {"command": "/bin/true"}, "tinypack": {"pack": "tinypack"}}
    (home / "upstream.yaml").write_text(yaml.safe_dump({"servers": servers}))
    keys = quick_json("pack", "keygen", "--out", str(tmp_path / "pub"))
    quick_json("pack", "trust", keys["pub"], "--name", "tester", home=home)
    for name in ("clock", "tinypack"):
        d = tmp_path / name
        (d / "src").mkdir(parents=True)
        (d / "pack.yaml").write_text(PACK_YAML.replace("tinypack", name))
        shutil.copy(TINY, d / "src" / "server.py")
        quick_json("pack", "sign", str(d), "--key", keys["key"])
    p = cli_quick("pack", "install", str(tmp_path / "clock"), "--json", home=home, check=False)
    assert p.returncode != 0 and "upstream server is named clock" in p.stdout, p.stdout
    assert quick_json("pack", "install", str(tmp_path / "tinypack"), home=home)["pack"] == "tinypack"
