"""Shared fixtures: temporary homes, a real `stockade serve` subprocess, root/kernel gating.

Tests that need root or a kernel feature call `need_root()` / `need(cond, why)`: outside CI
they skip with the reason; in CI (`CI` set) they fail instead, so nothing skips silently there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STOCKADE = [sys.executable, "-m", "stockade"]


def need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (run as root, or in CI)")


def run_cli(*args: str, home: Path | None = None, check: bool = True, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [*STOCKADE, *args]
    if home is not None:
        cmd += ["--home", str(home)]
    e = {**os.environ, **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, input=input, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def cli_json(*args: str, home: Path | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(run_cli(*args, "--json", home=home, **kw).stdout)


def cli_quick(*args: str, home: Path | None = None, check: bool = True, input: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`run_cli` in this process: the same click command without a new interpreter (each
    `python -m stockade` pays ~0.6 s of imports, several seconds on a loaded CI machine). For the
    setup steps of a test (init, agent create, pack sign/install, vault set) whose CLI output is
    not what the test is about; a test OF the CLI (its exit code, output, process, peer
    credentials) keeps `run_cli`. Off the main thread (click's runner swaps sys.stdout for the
    whole process) it runs the subprocess instead."""
    if threading.current_thread() is not threading.main_thread():
        return run_cli(*args, home=home, check=check, input=input, env=env)
    from click.testing import CliRunner

    from stockade.cli.main import cli
    from stockade.core import logs
    argv = [*args, *(["--home", str(home)] if home is not None else [])]
    log = logging.getLogger("stockade")
    saved = (log.handlers[:], log.level, log.propagate, logs._handler)
    try:
        r = CliRunner().invoke(cli, argv, input=input, env=env, catch_exceptions=True)
    finally:   # the command points stockade's logger at the runner's (closed) stderr: undo that
        log.handlers[:], log.level, log.propagate, logs._handler = saved
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
    p = subprocess.CompletedProcess(["stockade", *argv], r.exit_code, r.stdout, stderr)
    if check and p.returncode != 0:
        raise AssertionError(f"stockade {' '.join(argv)} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def quick_json(*args: str, home: Path | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
    """`cli_json` in this process (see `cli_quick`)."""
    return json.loads(cli_quick(*args, "--json", home=home, **kw).stdout)


@contextlib.contextmanager
def tmpfs_at(path: Path, size: str, source: str = "tmpfs") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` (created 0700) for the duration; root only.
    For tests that need a filesystem of their own: a full disk, or a data home that is one."""
    need_root()
    path.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", source, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(autouse=True)
def _stockade_logger_restored() -> Iterator[None]:
    """Each test gets the `stockade` logger as it found it. A CLI command run in this process
    (click's CliRunner) points the logger at its own, later closed, stderr and stops propagation,
    which hid later tests' log lines from caplog depending on the order xdist ran them in."""
    log = logging.getLogger("stockade")
    from stockade.core import logs

    saved = (log.handlers[:], log.level, log.propagate, logs._handler)
    yield
    log.handlers[:], log.level, log.propagate, logs._handler = saved


@pytest.fixture(scope="session", autouse=True)
def _volumes_unmounted_at_the_end(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`stockade init` as root gives each new home its volume (a loop-mounted image and four
    binds, stockade.core.volume), and a home's mounts outlive the gateway by design, as a
    partition's would. The suite creates hundreds of homes: each worker unmounts what is left
    under its own temporary directory when it ends, deepest first."""
    yield
    from stockade.core.volume import unmount_under

    unmount_under(tmp_path_factory.getbasetemp())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    cli_quick("init", home=h)
    return h


@dataclass
class Server:
    home: Path
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def agent(self, name: str) -> str:
        """Create an agent (once) and return its key."""
        if name not in self.keys:
            self.keys[name] = quick_json("agent", "create", name, home=self.home)["key"]
        return self.keys[name]

    def rpc(self, key: str | None, method: str, params: dict | None = None, *, id: int = 1,
            headers: dict[str, str] | None = None, timeout: float = 60) -> httpx.Response:
        h = {"Authorization": f"Bearer {key}"} if key else {}
        h.update(headers or {})
        body = {"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}
        return httpx.post(f"{self.url}/rpc", json=body, headers=h, timeout=timeout)

    def invoke(self, key: str, capability: str, args: dict | None = None, timeout: float = 60) -> dict:
        """JSON-RPC capabilities.invoke; returns the whole response object (result or error)."""
        return self.rpc(key, "capabilities.invoke", {"name": capability, "arguments": args or {}},
                        timeout=timeout).json()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(home: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    ports_file = home / "run" / "ports.json"
    if ports_file.exists():
        ports_file.unlink()
    log = open(home.parent / f"serve-{os.getpid()}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([*STOCKADE, "serve", "--home", str(home), "--port", "0", "--dashboard-port", "0", *extra],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stockade serve exited {proc.returncode}: {Path(log.name).read_text()}")
        if ports_file.exists():
            try:
                return Server(home, proc, json.loads(ports_file.read_text()))
            except ValueError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"stockade serve did not start: {Path(log.name).read_text()}")


@pytest.fixture
def server(home: Path) -> Iterator[Server]:
    s = start_server(home)
    try:
        yield s
    finally:
        s.stop()


def shared_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Server]:
    """Body of a module-scoped `server` fixture, for a module whose tests only call the gateway,
    each with agent names of its own (a start costs seconds; a test that restarts, crashes or
    reconfigures its gateway keeps the function-scoped `server`):

        @pytest.fixture(scope="module")
        def server(tmp_path_factory): yield from shared_server(tmp_path_factory, "readme")
    """
    h = tmp_path_factory.mktemp(name) / "home"
    cli_quick("init", home=h)
    s = start_server(h)
    try:
        yield s
    finally:
        s.stop()
