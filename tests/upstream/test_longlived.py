"""The long-lived sandbox launcher (stockade.sandbox.longlived) on its own, as root, with a real
network namespace, cgroup, user namespace, Landlock and seccomp: what a process started in it
can and cannot do. Each check fails when its layer is missing (a host process could do it).

Runs /usr/bin/python3 inside (it lives in /usr, which every long-lived sandbox sees read-only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need, need_root

from stockade.core.home import Home
from stockade.sandbox.longlived import Bind, Spec
from stockade.upstream import config, confine

pytestmark = pytest.mark.xdist_group("upstream-longlived")
PY = "/usr/bin/python3"
UID = 100_000 + 4242

PROBE = r"""
import json, os, socket, subprocess, sys
out = {"uid": os.getuid(), "pid": os.getpid(), "hostname": socket.gethostname(), "root": sorted(os.listdir("/"))}
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out.update(cap_eff=st["CapEff"].strip(), nnp=st["NoNewPrivs"].strip(), seccomp=st["Seccomp"].strip())
def attempt(name, fn):
    try:
        fn(); out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
rw, ro = sys.argv[1], sys.argv[2]
attempt("write_rw", lambda: open(rw + "/f", "w").write("x"))
attempt("write_ro", lambda: open(ro + "/f", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/f", "w").write("x"))
def run_written():
    p = rw + "/run.sh"
    with open(p, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(p, 0o755)
    subprocess.run([p], check=True)
attempt("exec_rw", run_written)
attempt("read_host", lambda: open(sys.argv[3]).read())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=3))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out["unshare"] = 0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()
print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    need_root()
    from stockade.sandbox import landlock

    need(landlock.abi_version() >= 1, "Landlock is not enabled in this kernel")
    need(os.path.exists(PY), f"{PY} is not installed")
    home = Home.at(tmp_path_factory.mktemp("longlived") / "home")
    home.root.mkdir(parents=True)
    cfg = config.ServerConfig(command=PY, memory=64 * 1024 * 1024, pids=32)
    made: list[confine.Placement] = []

    def make(binds: tuple[Bind, ...] = (), argv: tuple[str, ...] = ()) -> Spec:
        p = confine.place(home, None, confine.DISCOVERY, "probe", cfg, UID, {})
        made.append(p)
        return Spec(**{**p.spec.__dict__, "binds": binds, "argv": argv})

    yield make
    for p in made:
        confine.release(p)
    confine.forget(home, confine.DISCOVERY, "probe")


def _launch(spec: Spec, **kw: Any) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-I", "-B", "-m", "stockade.sandbox.longlived"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    assert p.stdin is not None
    p.stdin.write((spec.to_json() + "\n").encode())
    p.stdin.flush()
    return p


def test_a_process_in_the_long_lived_sandbox_is_confined(place: Any, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    os.chown(rw, UID, UID)
    (ro / "f").write_text("host")
    os.chmod(ro / "f", 0o666)          # writable on the host: only the read-only mount stops it
    secret = tmp_path / "host-secret"
    secret.write_text("s")
    os.chmod(secret, 0o644)            # readable on the host: only the mount namespace hides it
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    spec = place((Bind(str(rw), False), Bind(str(ro), True)),
                 (PY, "-c", PROBE, str(rw), str(ro), str(secret), str(port)))
    p = _launch(spec)
    out, err = p.communicate(timeout=60)
    listener.close()
    assert p.returncode == 0, err.decode()
    r = json.loads(out)
    assert r["uid"] == 1100 and r["pid"] == 1 and r["hostname"] == "upstream", r
    assert r["cap_eff"] == "0000000000000000" and r["nnp"] == "1" and r["seccomp"] == "2", r
    assert r["write_rw"] == "ok" and r["write_tmp"] == "ok", r
    assert r["write_ro"] in (13, 30), r                    # EACCES (Landlock) / EROFS (mount)
    assert r["exec_rw"] == 13, r                           # Landlock: what it writes it cannot run
    assert r["read_host"] == 2, r                          # ENOENT: not in its view at all
    assert r["connect"] in (13, 111), r                    # EACCES (Landlock port) / refused (own netns)
    assert r["unshare"] == 1, r                            # EPERM: seccomp
    assert "var" not in r["root"] and "home" not in r["root"], r
    assert (ro / "f").read_text() == "host"


def test_memory_limit_kills_the_server(place: Any) -> None:
    spec = place((), (PY, "-c", "b = bytearray(512 * 1024 * 1024); print('survived')"))
    p = _launch(spec)
    out, err = p.communicate(timeout=60)
    assert b"survived" not in out
    assert p.returncode in (128 + signal.SIGKILL, 1), (p.returncode, err.decode())


def test_killing_the_launcher_kills_the_server(place: Any) -> None:
    spec = place((), (PY, "-c", "import time; print('up', flush=True); time.sleep(600)"))
    p = _launch(spec)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(children) == 1
    server = int(children[0])
    p.kill()
    p.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{server}/cmdline").exists() or not Path(f"/proc/{server}/cmdline").read_bytes()


def test_a_setup_failure_is_reported_not_run(place: Any) -> None:
    spec = place((Bind("/definitely/not/here", True),), (PY, "-c", "print('ran')"))
    p = _launch(spec)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 70 and b"ran" not in out
    assert json.loads(err.decode().strip().splitlines()[-1])["setup_error"].startswith("mounts:"), err
