"""`make run` / `stockade demo`: the banner says which STOCKADE_HOME to export, and the demo agent's
key survives a restart (kept 0600 in the demo home) unless a rotation is asked for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
from tests.conftest import ROOT, STOCKADE

SLOW = 240


def _demo(home: Path, *extra: str) -> tuple[str, str]:
    """Run the demo until its banner is out; return (banner, key); then stop it with SIGINT."""
    proc = subprocess.Popen([*STOCKADE, "demo", "--home", str(home), "--port", "0", "--dashboard-port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + SLOW
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        banner = "".join(lines)
        m = re.search(r"agent key\s+(stk_\S+)", banner)
        assert m, banner
        gateway = re.search(r"gateway\s+(http://\S+)", banner)
        assert gateway, banner
        r = httpx.post(f"{gateway.group(1)}/rpc", headers={"Authorization": f"Bearer {m.group(1)}"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke",
                             "params": {"name": "system.time"}}, timeout=60)
        assert "result" in r.json(), r.text
        return banner, m.group(1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(SLOW)


def test_demo_key_survives_a_restart_and_rotates_on_request(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    banner, first = _demo(home)
    assert f"export STOCKADE_HOME={home}" in banner
    keyfile = home / "demo-agent.key"
    assert keyfile.read_text().strip() == first and keyfile.stat().st_mode & 0o777 == 0o600
    _, again = _demo(home)
    assert again == first
    _, rotated = _demo(home, "--rotate-key")
    assert rotated != first and keyfile.read_text().strip() == rotated


def test_make_run_passes_ports_through() -> None:
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "run", "PORT=7711", "DASHBOARD_PORT=7811"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "--port 7711 --dashboard-port 7811" in out, out
