"""A real gateway (`stockade serve`'s build + serve, HTTP JSON-RPC, every part) in a subprocess,
two agents, and a test-only capability that runs attacker Python inside the sandbox child.

Layers are switched off per call through a test-only switch file, which only the test executor
(tests/sandbox/testing.py) reads and only the test zygote entry (tests/sandbox/testing_zygote.py)
honours; the shipped zygote ignores any such request (tests/sandbox/test_shipped.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import need, need_root

ATTACK_FILE = str(Path(__file__).parent / "attack_caps.py")
SERVE = str(Path(__file__).parent / "serve_testcaps.py")

PRELUDE = '''
import ctypes, os, errno, socket, time
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) if isinstance(x, int) else x for x in a])
    return (r, ctypes.get_errno() if r < 0 else 0)
def attempt(f):
    try:
        v = f()
        return {"ok": True, "value": v if isinstance(v, (int, str, list, bool)) or v is None else repr(v)}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "error": errno.errorcode.get(e.errno, str(e.errno))}
'''


@dataclass
class Sbx:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    keys: dict[str, str]
    agents: dict[str, str]
    uids: dict[str, int]
    canary: Path
    switch: Path
    cgroup_parent: str

    def invoke(self, capability: str, args: dict[str, Any], agent: str = "a", off: tuple[str, ...] = (),
               timeout: float = 60) -> dict[str, Any]:
        self.switch.write_text(json.dumps(sorted(off)))
        try:
            body = {"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke",
                    "params": {"name": capability, "arguments": args}}
            r = httpx.post(f"{self.url}/rpc", json=body, timeout=timeout,
                           headers={"Authorization": f"Bearer {self.keys[agent]}"})
            return r.json()
        finally:
            self.switch.write_text("[]")

    def run(self, code: str, agent: str = "a", off: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run attacker code in the sandbox; return its `result` dict or the error object."""
        out = self.invoke("test.pyexec", {"code": PRELUDE + code}, agent, off)
        if "result" in out:
            return out["result"]
        return {"_error": out["error"]["data"]}

    def cgroup_procs(self, agent: str = "a") -> list[int]:
        from stockade.egress.netns import home_tag
        from stockade.sandbox.cgroups import AgentCgroup, detect

        return AgentCgroup(detect(), self.cgroup_parent, self.agents[agent], home_tag(self.home)).procs()


def _write(p: Path, text: str) -> None:
    p.write_text(text)
    os.chmod(p, 0o600)


@pytest.fixture(scope="session")
def sbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sbx]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    base = tmp_path_factory.mktemp("sbx")
    canary = base / "canary-leaked-host-file"
    canary.write_text("host file the zygote keeps open\n")
    switch = base / "layer-switch.json"
    switch.write_text("[]")
    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns

    home = Home.at(base / "home")
    init_home(home)
    pid = os.getpid()
    parent = f"stockade-test-{pid}"
    _write(home.config_path, f"""version: 1
sandbox:
  call_timeout: 4s
  max_output_bytes: 65536
  cgroup_parent: {parent}
""")
    _write(home.policies / "org.yaml", """version: 1
default: autonomous
rules:
  - {id: tests, capability: "test.*", tier: autonomous}
sandbox:
  cpu: 0.5
  memory: 96MiB
  pids: 32
  tmpfs: 8MiB
  egress: []
""")
    names = {"a": f"esc{pid}a", "b": f"esc{pid}b"}
    db = home.db()
    keys = {k: agents.create(db, n) for k, n in names.items()}
    with contextlib.suppress(Exception):
        db.commit()
    uids = {k: 100_000 + db.execute("SELECT rowid FROM agents WHERE name=?", (n,)).fetchone()[0]
            for k, n in names.items()}
    db.close()
    log = open(base / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, SERVE, str(home.root), str(switch), str(canary)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not home.ports_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("gateway did not start: " + (base / "serve.log").read_text())
        time.sleep(0.05)
    ports = json.loads(home.ports_file.read_text())
    s = Sbx(proc, f"http://127.0.0.1:{ports['gateway']}", home, keys, names, uids, canary, switch, parent)
    try:
        yield s
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for n in names.values():
            agentns.remove(n, home)
        from stockade.sandbox.cgroups import detect, remove_tree

        remove_tree(detect(), parent)


@pytest.fixture
def host_listener() -> Iterator[tuple[socket.socket, int]]:
    """A TCP service on the host's loopback (what the sandbox must not reach)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s, s.getsockname()[1]
    finally:
        s.close()
