"""No state leaks between calls (issue 16): call after call on one agent, each call leaves behind
everything it can (a file in /tmp, a detached background process, an environment variable, an
inheritable fd, a changed cwd, a SysV shared-memory segment if seccomp lets it) and the next call
sees none of it.
Controls: with the mount layer off a /tmp file survives, with the pid namespace off the detached
process does; so the checks can see a leak when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_root
from tests.sandbox import attack_caps
from tests.sandbox.conftest import ATTACK_FILE, PRELUDE

from stockade.core.types import Caller
from stockade.sandbox import cgroups

pytestmark = pytest.mark.root
PARENT = f"stockade-leak-{os.getpid()}"
KEY = 0x5354AB                       # SysV IPC key of the segment a call leaves behind

CALL = f"""
def snap():
    return {{"tmp": sorted(os.listdir('/tmp')),
             "procs": sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
             "env": dict(os.environ), "cwd": os.getcwd(),
             "fds": sorted(int(x) for x in os.listdir('/proc/self/fd')),
             "shm": sc(29, {KEY}, 0, 0)[1]}}      # shmget(key, 0, 0): ENOENT when there is none
result['before'] = snap()
prev = ctx.extra.get('prev_sleeper')
result['prev_alive'] = bool(prev) and os.path.exists('/proc/%d' % prev)
# leave behind everything a call can
open('/tmp/leak-%d' % time.time_ns(), 'w').write('x')
os.environ['STOCKADE_LEAK'] = '1'
os.set_inheritable(os.open('/dev/null', os.O_RDONLY), True)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        os.closerange(3, 1024)       # not holding the result pipe: the call ends without waiting
        time.sleep(60)
        os._exit(0)
    os.write(w, str(pid).encode())
    os._exit(0)
os.wait()
result['sleeper'] = int(os.read(r, 32))
result['shm_made'] = sc(29, {KEY}, 4096, 0o1000 | 0o600)[1]    # IPC_CREAT
os.chdir('/tmp')
"""


@pytest.fixture(params=[False, True], ids=["cold", "pooled"])
def run(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Calls on one agent; with the pool on, every call after the first waits (untimed) for a
    pre-armed child and must be served by one."""
    need_root()
    from tests.sandbox.testing import TestingExecutor, wait_ready

    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns

    home = Home.at(tmp_path / "home")
    init_home(home)
    db = home.db()
    name = f"lk{os.getpid()}"
    agents.create(db, name)
    ex = TestingExecutor(home, call_timeout=20, cgroup_parent=PARENT, modules=(ATTACK_FILE,), pool=request.param)
    ex.db = db
    ex.start_zygote()
    d = {x.name: x for x in attack_caps.definitions()}["test.pyexec"]
    sleepers: list[int] = []
    configs: list[list[str]] = []

    def call(prev: int | None = None) -> dict[str, Any]:
        code = PRELUDE + (f"ctx.extra['prev_sleeper'] = {prev}\n" if prev else "") + CALL
        # the agent's previous call had the same layers: its slot holds a pre-armed child
        pooled = ex.pool and configs[-1:] == [sorted(ex.off)]
        configs.append(sorted(ex.off))
        if pooled:
            assert wait_ready(ex)
        out = asyncio.run(ex.run(Caller(name, b"", "s", "test"), d, {"code": code}, "leak"))
        assert ex.last_child.get("pooled") == pooled, (ex.last_child, pooled)
        if "pidns" in ex.off:       # only then is the sleeper's pid a host pid
            sleepers.append(out["sleeper"])
        return out

    try:
        yield ex, call, sleepers
    finally:
        ex.stop()
        for f in Path("/tmp").glob("leak-*"):      # the mounts-off control writes to the host's /tmp
            f.unlink()
        for pid in sleepers:                      # the pidns-off control's sleepers (host pids)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if sleepers:
            time.sleep(0.5)
        agentns.remove(name, home)
        cgroups.remove_tree(cgroups.detect(), PARENT)
        db.close()


def test_nothing_survives_from_one_call_to_the_next(run) -> None:  # type: ignore[no-untyped-def]
    ex, call, _ = run
    first = call()
    base = first["before"]
    assert base["tmp"] == [] and base["procs"] == [1] and base["cwd"] == "/workspace", base
    assert "STOCKADE_LEAK" not in base["env"], base
    # SysV IPC: denied by seccomp (EPERM); were it allowed, each call has a fresh IPC namespace
    assert base["shm"] in (2, 1) and first["shm_made"] in (0, 1), first
    prev = first["sleeper"]
    for _ in range(4):
        r = call(prev)
        assert r["before"] == base, (r["before"], base)
        assert r["prev_alive"] is False
        prev = r["sleeper"]


def test_controls_see_the_leaks_with_a_layer_off(run) -> None:  # type: ignore[no-untyped-def]
    ex, call, _ = run
    ex.off = {"mounts"}                           # /tmp is then the host's: the file survives
    call()
    assert any(n.startswith("leak-") for n in call()["before"]["tmp"])
    ex.off = {"pidns"}                            # no pid namespace: the detached process survives
    first = call()
    assert call(first["sleeper"])["prev_alive"] is True
