"""`stockade init`, `agent ...`, `doctor` and `demo` as a newcomer uses them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.conftest import cli_json, cli_quick, run_cli


def test_init_creates_private_home(tmp_path: Path) -> None:
    h = tmp_path / "h"
    run_cli("init", home=h)
    run_cli("init", home=h)  # idempotent
    for p in [h, *h.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_socket():
            continue
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
    assert (h / "stockade.yaml").exists() and (h / "stockade.db").exists()
    for d in ("policies", "audit", "keys", "workspaces", "shared", "packs", "trash", "run"):
        assert (h / d).is_dir()


def test_home_from_environment(tmp_path: Path) -> None:
    h = tmp_path / "envhome"
    run_cli("init", env={"STOCKADE_HOME": str(h)})
    assert (h / "stockade.yaml").exists()


def test_agent_lifecycle_json(tmp_path: Path) -> None:
    h = tmp_path / "h"
    cli_quick("init", home=h)   # setup: in this process (init itself is tested above)
    created = cli_json("agent", "create", "worker-1", home=h)
    assert created["name"] == "worker-1" and created["key"].startswith("stk_") and len(created["key"]) == 47
    db = (h / "stockade.db").read_bytes()
    assert created["key"].encode() not in db  # only the hash is stored
    agents = cli_json("agent", "list", home=h)["agents"]
    assert [a["name"] for a in agents] == ["worker-1"] and agents[0]["status"] == "active"
    rotated = cli_json("agent", "rotate", "worker-1", home=h)["key"]
    assert rotated != created["key"]
    cli_json("agent", "revoke", "worker-1", home=h)
    assert cli_json("agent", "list", home=h)["agents"][0]["status"] == "revoked"


def test_agent_bad_names_change_nothing(tmp_path: Path) -> None:
    h = tmp_path / "h"
    cli_quick("init", home=h)   # setup: in this process (init itself is tested above)
    for bad in ("admin", "Bad", "9lives", "x" * 33, "a b", "system"):
        p = run_cli("agent", "create", bad, "--json", home=h, check=False)
        assert p.returncode == 2, (bad, p.stdout, p.stderr)
        assert json.loads(p.stdout)["error"]["type"] == "InvalidInput"
    cli_json("agent", "create", "ok", home=h)
    dup = run_cli("agent", "create", "ok", home=h, check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert [a["name"] for a in cli_json("agent", "list", home=h)["agents"]] == ["ok"]


def test_serve_refuses_invalid_config_with_file_line(tmp_path: Path) -> None:
    h = tmp_path / "h"
    cli_quick("init", home=h)   # setup: in this process (init itself is tested above)
    (h / "stockade.yaml").write_text("version: 1\ngateway:\n  port: seven\n")
    p = run_cli("serve", "--port", "0", home=h, check=False, timeout=30)
    assert p.returncode == 2
    assert f"{h / 'stockade.yaml'}:3: gateway.port" in p.stderr
    assert "Traceback" not in p.stderr


def test_doctor_json(tmp_path: Path) -> None:
    h = tmp_path / "h"
    cli_quick("init", home=h)   # setup: in this process (init itself is tested above)
    p = run_cli("doctor", "--json", home=h, check=False)
    out = json.loads(p.stdout)
    assert out["checks"]["home"]["status"] == "ok" and out["checks"]["config"]["status"] == "ok"
    assert out["checks"]["capabilities"]["count"] >= 5
    os.chmod(h / "stockade.yaml", 0o644)
    out = json.loads(run_cli("doctor", "--json", home=h, check=False).stdout)
    assert out["checks"]["home"]["status"] == "degraded"


def test_demo_prints_a_working_key_and_stops_cleanly(tmp_path: Path) -> None:
    """What `make run` does, on free ports."""
    h = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "stockade", "demo", "--home", str(h), "--port", "0",
                             "--dashboard-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    key = url = None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline and not (key and url):
        line = proc.stdout.readline()
        lines.append(line)
        if line.strip().startswith("gateway"):
            url = line.split()[1]
        if line.strip().startswith("agent key"):
            key = line.split()[2]
    assert key and url, "".join(lines)
    r = httpx.post(f"{url}/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke",
                                       "params": {"name": "agent.whoami"}}, headers={"Authorization": f"Bearer {key}"})
    assert r.json()["result"]["agent"] == "demo"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped cleanly" in out
