"""`stockade serve` refuses to start, at once and with one clear line (exit 3), when it cannot run
safely: a busy port, a damaged database, a home another server holds, a part that does not load.
It never takes a live server's run files or admin socket away.

Real processes on temporary homes; the only timeouts are generous ones on the subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import STOCKADE, Server, cli_quick, start_server

from stockade.core import admin
from stockade.core.config import Config
from stockade.core.errors import StockadeError
from stockade.core.events import EventBus
from stockade.core.home import Home
from stockade.core.wiring import Gateway
from stockade.supervision.admin import AdminServer

# One worker runs the module: two of its tests share one live gateway (module-scoped `live`).
pytestmark = pytest.mark.xdist_group("gateway-start")

EXIT_STARTUP = 3
SLOW = 240  # seconds: a start-up on a loaded CI machine, not an expectation of speed


def _serve(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*STOCKADE, "serve", "--home", str(home), "--dashboard-port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SLOW, env={**os.environ, **(env or {})})


def _one_line(stderr: str) -> str:
    """The refusal: one `stockade: ...` line, no traceback (other warnings may come before it)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("stockade:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def fresh_home(tmp_path: Path) -> Path:
    h = tmp_path / "h"
    cli_quick("init", home=h)   # setup: in this process
    return h


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running server that the tests only try to displace (and must not): shared by them."""
    h = tmp_path_factory.mktemp("live") / "h"
    cli_quick("init", home=h)
    s = start_server(h)
    try:
        yield s
    finally:
        s.stop()


def test_busy_port_is_one_line_and_exit_3(fresh_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = _serve(fresh_home, "--port", str(port))
    assert p.returncode == EXIT_STARTUP, (p.stdout, p.stderr)
    line = _one_line(p.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line, line
    assert not (fresh_home / "run" / "ports.json").exists()


def test_damaged_database_is_exit_3_with_the_cause(fresh_home: Path) -> None:
    db = fresh_home / "stockade.db"
    for side in (fresh_home / "stockade.db-wal", fresh_home / "stockade.db-shm"):
        side.unlink(missing_ok=True)
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    p = _serve(fresh_home, "--port", "0")
    assert p.returncode == EXIT_STARTUP, (p.stdout, p.stderr)
    line = _one_line(p.stderr)
    assert str(db) in line and "not a database" in line, line


def test_second_serve_on_a_held_home_leaves_the_live_server_alone(live: Server) -> None:
    ports_file = live.home / "run" / "ports.json"
    before = ports_file.read_bytes()
    p = _serve(live.home, "--port", "0")
    assert p.returncode == EXIT_STARTUP, (p.stdout, p.stderr)
    assert "another" in _one_line(p.stderr)
    assert ports_file.read_bytes() == before            # still the live server's
    assert (live.home / "run" / "admin.sock").exists()
    assert httpx.get(f"{live.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert isinstance(admin.call(Home.at(live.home), "audit.head"), dict)   # the admin socket too
    assert live.proc.poll() is None


def test_a_part_that_does_not_import_stops_serve(fresh_home: Path, tmp_path: Path) -> None:
    """A finder on PYTHONPATH (test code only) makes `stockade.approvals.setup` fail to import, as a
    broken install would: serve must refuse, naming the part, instead of running without it."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'stockade.approvals.setup':\n"
        "            raise ImportError('approvals setup damaged (test)')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Broken())\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    p = _serve(fresh_home, "--port", "0", env=env)
    assert p.returncode == EXIT_STARTUP, (p.stdout, p.stderr)
    line = _one_line(p.stderr)
    assert "part approvals" in line and "approvals setup damaged (test)" in line, line
    # Switched off by the owner, the same broken part is not loaded and serve runs.
    cfg = fresh_home / "stockade.yaml"
    cfg.write_text(cfg.read_text() + "\nparts:\n  approvals: off\n")
    live = start_server(fresh_home, env=env)
    try:
        assert httpx.get(f"{live.url}/healthz", timeout=30).status_code == 200
    finally:
        live.stop()


def _gateway(home: Path) -> Gateway:
    """Just what the admin server reads (its home and command table); no parts run."""
    return Gateway(Home.at(home), Config(), pipeline=None, bus=EventBus())  # type: ignore[arg-type]


def test_admin_socket_is_never_taken_from_a_live_server(live: Server) -> None:
    sock = live.home / "run" / "admin.sock"
    inode = sock.stat().st_ino
    second = AdminServer(_gateway(live.home))
    with pytest.raises(StockadeError) as refused:
        asyncio.run(second.start())
    assert refused.value.type == "Conflict" and str(sock) in refused.value.message
    asyncio.run(second.stop())                         # stopping the refused one unlinks nothing
    assert sock.stat().st_ino == inode
    assert isinstance(admin.call(Home.at(live.home), "audit.head"), dict)   # the live one answers


def test_admin_socket_left_by_a_dead_server_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "h"
    (home / "run").mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(home / "run" / "admin.sock"))      # bound, never listening, then gone
    stale.close()
    assert not admin.running(Home.at(home))

    async def start_and_ask() -> bool:
        srv = AdminServer(_gateway(home))
        await srv.start()
        try:
            return await asyncio.to_thread(admin.running, Home.at(home))
        finally:
            await srv.stop()

    assert asyncio.run(start_and_ask())
    assert not (home / "run" / "admin.sock").exists()


def test_ports_file_names_every_listener(fresh_home: Path) -> None:
    live = start_server(fresh_home)
    try:
        ports = json.loads((fresh_home / "run" / "ports.json").read_text())
        assert set(ports) == {"gateway", "dashboard"} and all(isinstance(v, int) and v > 0 for v in ports.values())
    finally:
        assert live.stop() == 0
    assert not (fresh_home / "run" / "ports.json").exists()   # removed by the server that wrote it
