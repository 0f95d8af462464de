"""The runtime's shells on the real kernel: cgroup v1 (for real) and v2 (as far as this kernel
allows), aggregate per-agent limits, the strict seccomp profile, fail-closed SandboxUnavailable,
doctor/health reporting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need, need_root
from tests.sandbox import attack_caps
from tests.sandbox.conftest import ATTACK_FILE, PRELUDE

from stockade.core.errors import StockadeError
from stockade.egress.netns import home_tag
from stockade.gateway.pipeline import Caller
from stockade.sandbox import Profile, cgroups

pytestmark = pytest.mark.root


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


# -- cgroup v1 (this machine kind) --------------------------------------------------------------
def test_cgroup_v1_for_real() -> None:
    need_root()
    info = cgroups.detect(prefer=1)
    need(info.version == 1, "no cgroup v1 memory/pids/cpu controllers on this host")
    parent = f"stockade-unit-{os.getpid()}"
    g = cgroups.AgentCgroup(info, parent, "v1agent")
    p = Profile(memory=64 << 20, pids=7, cpu=0.25)
    proc = _sleeper()
    try:
        g.ensure(p, cgroups.block_devices(["/"]))
        d = g.dirs()
        assert Path(d["memory"], "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        if Path(d["memory"], "memory.memsw.limit_in_bytes").exists():
            assert Path(d["memory"], "memory.memsw.limit_in_bytes").read_text().strip() == str(64 << 20)
        assert Path(d["pids"], "pids.max").read_text().strip() == "7"
        assert Path(d["cpu"], "cpu.cfs_quota_us").read_text().strip() == "25000"
        g.ensure(Profile(memory=128 << 20, pids=9), [])   # re-applying (growing) works
        assert Path(d["memory"], "memory.limit_in_bytes").read_text().strip() == str(128 << 20)
        g.attach(proc.pid)
        assert proc.pid in g.procs()
        assert set(g.counters()) == {"oom_kill", "pids_max"}
        g.kill_all()
        proc.wait(5)
        assert proc.returncode == -9
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        time.sleep(0.05)
        g.remove()
        for m in info.v1.values():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(m, parent))
    assert not any(os.path.exists(x) for x in g.dirs().values())


# -- cgroup v2 (as far as this kernel allows) -----------------------------------------------------
def test_cgroup_v2_path() -> None:
    """On a hybrid host the cgroup2 hierarchy cannot hold memory/pids/cpu (bound to v1): the
    limits must fail loudly; group creation, attach, cgroup.kill and removal are exercised."""
    need_root()
    info = cgroups.detect(prefer=2)
    need(info.version == 2 and info.v2_root is not None, "no cgroup2 hierarchy mounted")
    parent = f"stockade-unit-{os.getpid()}"
    g = cgroups.AgentCgroup(info, parent, "v2agent")
    proc = _sleeper()
    try:
        complete = not cgroups.missing_controllers(info)
        if complete:
            g.ensure(Profile(memory=64 << 20, pids=7), [])
            d = g.dirs()["v2"]
            assert Path(d, "memory.max").read_text().strip() == str(64 << 20)
            assert Path(d, "memory.swap.max").read_text().strip() == "0"
            assert Path(d, "pids.max").read_text().strip() == "7"
        else:
            with pytest.raises(OSError, match="controller not enabled"):
                g.ensure(Profile(), [])
        d = g.dirs()["v2"]
        assert os.path.isdir(d)
        g.attach(proc.pid)
        assert g.procs() == [proc.pid]
        g.kill_all()            # cgroup.kill
        proc.wait(5)
        assert proc.returncode == -9
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        time.sleep(0.05)
        g.remove()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(info.v2_root or "/nonexistent", parent))


# -- executor, direct ---------------------------------------------------------------------------
class _Pol:
    def __init__(self, d: dict[str, Any]):
        self.d = d

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return self.d


@pytest.fixture
def direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A SandboxExecutor + zygote of our own (no gateway), for profile and fail-closed cases."""
    need_root()
    from tests.sandbox.testing import TestingExecutor

    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns
    from stockade.sandbox.executor import SandboxExecutor

    home = Home.at(tmp_path / "home")
    init_home(home)
    db = home.db()
    name = f"rt{os.getpid()}"
    agents.create(db, name)
    made: list[SandboxExecutor] = []

    def make(**kw: Any) -> SandboxExecutor:
        ex = TestingExecutor(home, call_timeout=5, cgroup_parent=f"stockade-rt-{os.getpid()}",
                             modules=(ATTACK_FILE,), **kw)
        ex.db = db
        ex.start_zygote()
        made.append(ex)
        return ex

    defs = {d.name: d for d in attack_caps.definitions()}
    caller = Caller(name, b"", "s", "test")

    def call(ex: SandboxExecutor, code: str) -> dict[str, Any]:
        return asyncio.run(acall(ex, code))

    async def acall(ex: SandboxExecutor, code: str) -> dict[str, Any]:
        return await ex.run(caller, defs["test.pyexec"], {"code": PRELUDE + code}, "call")

    call.acall = acall  # type: ignore[attr-defined]
    try:
        yield make, call, name
    finally:
        for ex in made:
            ex.stop()
        agentns.remove(name, home)
        cgroups.remove_tree(cgroups.detect(), f"stockade-rt-{os.getpid()}")
        db.close()


def test_strict_seccomp_profile_denies_exec_and_fork(direct) -> None:  # type: ignore[no-untyped-def]
    make, call, _ = direct
    code = """
result['fork'] = sc(57)
if result['fork'][0] == 0:
    os._exit(0)
result['execve'] = sc(59, b'/nonexistent/x', None, None)
result['thread'] = attempt(lambda: __import__('threading').Thread(target=lambda: None).start())
"""
    ex = make()
    ex.policy = _Pol({"seccomp": "strict"})
    r = call(ex, code)
    assert r["fork"] == [-1, 1] and r["execve"] == [-1, 1]
    assert r["thread"]["ok"]                     # threads still work
    ex.policy = _Pol({"seccomp": "default"})
    r = call(ex, code)
    assert r["fork"][0] > 0 and r["execve"] == [-1, 2]


def test_missing_layer_fails_closed(direct) -> None:  # type: ignore[no-untyped-def]
    """cgroup v2 forced on a host whose v2 hierarchy lacks the controllers: nothing runs."""
    make, call, _ = direct
    info = cgroups.detect(prefer=2)
    need(info.version == 2, "no cgroup2 hierarchy mounted")
    ex = make(cgroup_version=2)
    if cgroups.missing_controllers(info):
        assert any("cgroup v2" in p for p in ex.problems())
        assert ex.health()["status"] == "critical"
        marker = f"/tmp/stockade-ran-{os.getpid()}"
        with pytest.raises(StockadeError) as ei:
            call(ex, f"open({marker!r}, 'w').write('ran')")
        assert ei.value.type == "SandboxUnavailable"
        assert not os.path.exists(marker)
    else:
        assert call(ex, "result = {'ok': 1}") == {"ok": 1}


def test_zygote_gone_is_replaced_or_fails_closed(direct) -> None:  # type: ignore[no-untyped-def]
    make, call, _ = direct
    ex = make()
    assert call(ex, "result = {'x': 1}") == {"x": 1}
    first = ex.status["pid"]
    ex.proc.kill()
    ex.proc.wait()
    assert call(ex, "result = {'x': 2}") == {"x": 2}    # a fresh zygote took over
    assert ex.status["pid"] != first and ex.health()["zygote_restarts"] == 1
    ex.proc.kill()                                      # dies again within 10 s: no restart loop
    ex.proc.wait()
    with pytest.raises(StockadeError) as ei:
        call(ex, "result = {'x': 3}")
    assert ei.value.type == "SandboxUnavailable"
    assert ex.health()["status"] == "critical"


def test_aggregate_pids_limit_across_concurrent_calls(direct) -> None:  # type: ignore[no-untyped-def]
    """Two concurrent calls share the agent's 24 pids: together they cannot fork 2 x 20."""
    make, call, _ = direct
    ex = make()
    ex.policy = _Pol({"pids": 24})
    code = """
n = 0
try:
    while n < 20:
        pid = os.fork()
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        n += 1
except OSError:
    pass
time.sleep(1.5)
result['n'] = n
"""
    async def one(delay: float) -> Any:
        await asyncio.sleep(delay)
        try:
            return (await call.acall(ex, code))["n"]
        except StockadeError as e:
            return e.data.get("resource")

    async def both() -> list[Any]:
        return list(await asyncio.gather(one(0), one(0.2)))

    out = asyncio.run(both())
    counts = [x for x in out if isinstance(x, int)]
    assert len(out) == 2 and sum(counts) < 40, out


def test_doctor_reports_every_layer(tmp_path: Path) -> None:
    need_root()
    from stockade.core.home import Home
    from stockade.sandbox import setup

    out = setup.doctor(Home.at(tmp_path))
    assert set(out) == {"sandbox.landlock", "sandbox.seccomp", "sandbox.userns", "sandbox.cgroup",
                        "sandbox.nftables", "sandbox.host_paths"}
    assert out["sandbox.landlock"]["abi"] >= 1 and out["sandbox.seccomp"]["status"] == "ok"
    assert out["sandbox.userns"]["available"] is True
    assert out["sandbox.cgroup"]["version"] in (1, 2)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is `pid`."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append((int(p), fields[0]))
    return out


def test_failed_cgroup_attach_leaves_no_child_and_no_fd(direct) -> None:  # type: ignore[no-untyped-def]
    """The zygote cannot move a child into the agent's cgroup: the call fails as
    SandboxUnavailable, and the child is killed, reaped and its pidfd closed (issue 15)."""
    make, call, _ = direct
    ex = make()
    assert call(ex, "result = {'x': 1}") == {"x": 1}
    zpid = ex.proc.pid
    deadline = time.monotonic() + 5     # the call was answered before its child's exit and reap
    while _children(zpid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)                     # the reap closes the call's pidfd and status pipe
    fds = len(os.listdir(f"/proc/{zpid}/fd"))
    ex.faults = {"attach"}          # the test zygote's injected failure of CallCgroup.attach
    for _ in range(3):
        with pytest.raises(StockadeError) as ei:
            call(ex, "result = {'ran': True}")
        assert ei.value.type == "SandboxUnavailable" and "attach" in ei.value.message
    ex.faults = set()
    assert call(ex, "result = {'x': 2}") == {"x": 2}
    deadline = time.monotonic() + 5
    while _children(zpid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children(zpid) == []                       # no zombie, nothing left running
    assert len(os.listdir(f"/proc/{zpid}/fd")) == fds  # no pidfd left open


def test_removed_cgroup_is_recreated_and_reported(direct) -> None:  # type: ignore[no-untyped-def]
    """The agent's cgroup removed underneath the zygote (issue 23 item 5): the next call
    re-creates it, runs inside it with its limits, and health reports the repair."""
    make, call, name = direct
    gh: dict[str, Any] = {}
    ex = make(gateway_health=gh)
    assert call(ex, "result = {'x': 1}") == {"x": 1}
    g = cgroups.AgentCgroup(cgroups.detect(), f"stockade-rt-{os.getpid()}", name, home_tag(ex.home))
    dirs = list(g.dirs().values())
    assert dirs and all(os.path.isdir(d) for d in dirs)
    g.remove()
    assert not any(os.path.isdir(d) for d in dirs)
    assert call(ex, "result = {'x': 2}") == {"x": 2}
    assert all(os.path.isdir(d) for d in dirs)
    assert any(r["repaired"] == "cgroup" and r["agent"] == name for r in ex.health()["repairs"])
    assert gh["sandbox"]["repairs"] == ex.health()["repairs"]


def test_health_follows_a_zygote_restart(direct) -> None:  # type: ignore[no-untyped-def]
    """SIGKILLed zygote (issue 23 item 8): calls arriving during the restart get the new zygote
    or SandboxUnavailable, never Internal; health then names the new pid, not critical."""
    make, call, _ = direct
    gh: dict[str, Any] = {}
    ex = make(gateway_health=gh)
    gh["sandbox"] = ex.health()
    assert call(ex, "result = {'x': 1}") == {"x": 1}
    old = ex.status["pid"]
    ex.proc.kill()
    ex.proc.wait()

    async def one(delay: float) -> Any:
        await asyncio.sleep(delay)
        try:
            return await call.acall(ex, "result = {'x': 2}")
        except StockadeError as e:
            return e.type

    async def many() -> list[Any]:
        return list(await asyncio.gather(*(one(d / 20) for d in range(8))))

    out = asyncio.run(many())
    assert all(o == {"x": 2} or o == "SandboxUnavailable" for o in out), out
    assert {"x": 2} in out
    assert ex.status["pid"] != old
    assert gh["sandbox"]["zygote_pid"] == ex.status["pid"] and gh["sandbox"]["status"] != "critical", gh


def test_stopped_zygote_hand_off_has_a_deadline(direct) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOPped zygote: the hand-off gives up after its deadline with SandboxUnavailable, the
    stall shows in health, and the stopped zygote is replaced."""
    make, call, _ = direct
    gh: dict[str, Any] = {}
    ex = make(gateway_health=gh)
    ex.handoff_timeout = 1.0
    assert call(ex, "result = {'x': 1}") == {"x": 1}
    old = ex.status["pid"]
    os.kill(ex.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StockadeError) as ei:
            call(ex, "result = {'x': 2}")
        assert ei.value.type == "SandboxUnavailable" and "did not answer" in ei.value.message
        assert gh["sandbox"]["zygote_stalls"] == 1 and gh["sandbox"]["status"] == "critical"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)
    assert call(ex, "result = {'x': 3}") == {"x": 3}      # replaced
    assert ex.status["pid"] != old and gh["sandbox"]["status"] != "critical"


def test_os_fork_is_a_constructor_parameter_not_an_env_switch(direct) -> None:  # type: ignore[no-untyped-def]
    """The os.fork path is chosen by test code through the zygote's constructor; the shipped
    zygote reads no environment switch (its source names none)."""
    import stockade.sandbox.zygote as zy

    assert "os.environ" not in Path(zy.__file__).read_text() and "getenv" not in Path(zy.__file__).read_text()
    make, call, _ = direct
    code = "result['pid1'] = os.getpid() == 1; result['ppid'] = os.getppid()"
    for os_fork in (False, True):
        r = call(make(os_fork=os_fork), code)
        assert r == {"pid1": True, "ppid": 0}


def test_zygote_imports_only_sandboxed_implementations(direct) -> None:  # type: ignore[no-untyped-def]
    """The zygote holds every `execution: sandbox` implementation and none of the in-process
    ones (their imports, e.g. sqlite3 and asyncio for state.*, would only grow every clone);
    its resident size is reported in health."""
    from stockade.capabilities.registry import load_registry

    make, call, _ = direct
    ex = make()
    reg = load_registry()
    held = set(ex.status["implementations"])
    sandboxed = {d.name for d in reg.all() if d.execution == "sandbox"}
    inprocess = {d.name for d in reg.all() if d.execution != "sandbox"}
    assert sandboxed and sandboxed <= held
    assert not (inprocess & held), sorted(inprocess & held)
    assert ex.health()["zygote_rss_kb"] > 0
    mods = call(ex, "import sys; result['m'] = sorted(m for m in ('sqlite3', 'asyncio') if m in sys.modules)")
    assert mods == {"m": []}
