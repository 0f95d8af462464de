"""cgroups per call (issue 16): a leaf per call under a per-home, per-agent group.

Real kernel (cgroup v1 on this machine kind), the shipped zygote on the test entry, no gateway.
Two concurrent calls of one agent with different memory limits each get their own (read from the
cgroup files while they run, and shown by which one the kernel kills); an OOM kill is attributed
to the call it hit; two data homes with the same agent name never share a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need, need_root
from tests.sandbox import attack_caps
from tests.sandbox.conftest import ATTACK_FILE, PRELUDE

from stockade.core.errors import StockadeError
from stockade.core.types import Caller
from stockade.egress import netns
from stockade.sandbox import cgroups

pytestmark = pytest.mark.root
MiB = 1 << 20
PARENT = f"stockade-pc-{os.getpid()}"

# hold (so the test can read the cgroup files), then fill `mib` MiB, then hold again, then end
# with a plain error (or a result)
CODE = """
time.sleep({hold})
blob = b'x' * ({mib} << 20)
result['mib'] = len(blob) >> 20
time.sleep({after})
if {fail}:
    from stockade.core.errors import err
    raise err('NotFound', 'done on purpose')
"""


class _Seq:
    """A policy whose profile changes between calls (a reload while an earlier call still runs)."""

    def __init__(self, *profiles: dict[str, Any]):
        self.profiles = list(profiles)

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return self.profiles.pop(0) if len(self.profiles) > 1 else self.profiles[0]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """make(home_name, agent) -> a TestingExecutor with its own zygote on a fresh home."""
    need_root()
    info = cgroups.detect()
    need(info.version == 1, "these checks read cgroup v1 files (this machine kind)")
    from tests.sandbox.testing import TestingExecutor

    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns

    made: list[tuple[Any, Any, str]] = []

    def _make(home_name: str, agent: str) -> Any:
        home = Home.at(tmp_path / home_name)
        init_home(home)
        db = home.db()
        agents.create(db, agent)
        ex = TestingExecutor(home, call_timeout=20, cgroup_parent=PARENT, modules=(ATTACK_FILE,))
        ex.db = db
        ex._agent(agent)        # the agents table is read here, in this thread (calls run in others)
        ex.start_zygote()
        made.append((ex, db, agent))
        return ex

    try:
        yield _make
    finally:
        for ex, db, agent in made:
            ex.stop()
            agentns.remove(agent, ex.home)
            db.close()
        cgroups.remove_tree(info, PARENT)


def _call(ex: Any, agent: str, call_id: str, code: str) -> Any:
    """Run pyexec; the result dict or the StockadeError (as a value)."""
    d = {x.name: x for x in attack_caps.definitions()}["test.pyexec"]
    try:
        return asyncio.run(ex.run(Caller(agent, b"", "s", "test"), d, {"code": PRELUDE + code}, call_id))
    except StockadeError as e:
        return e


def _in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def _agent_dir(ex: Any, agent: str, ctrl: str = "memory") -> str:
    info = cgroups.detect()
    return os.path.join(info.v1[ctrl], PARENT, netns.home_tag(ex.home), agent)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _leaves(agent_dir: str, fname: str) -> dict[str, str]:
    """{leaf: value of fname} for the call leaves that hold a process now."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(agent_dir):
            if e.is_dir() and _read(os.path.join(e.path, "cgroup.procs")):
                out[e.name] = _read(os.path.join(e.path, fname))
    return out


def _wait(cond: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_concurrent_calls_of_one_agent_each_get_their_own_limit(make) -> None:  # type: ignore[no-untyped-def]
    """The policy changes while call A runs: A keeps its 64 MiB, B gets 256 MiB, concurrently.
    A fills 128 MiB and is killed; B fills 128 MiB and then fails on purpose: its error stays its
    own (the kill in A is not attributed to B), and health names A's call."""
    agent = f"pc{os.getpid()}"
    ex = make("home", agent)
    ex.policy = _Seq({"memory": "64MiB", "pids": 20}, {"memory": "256MiB", "pids": 30})
    ta, a = _in_thread(_call, ex, agent, "call-a", CODE.format(hold=3, mib=128, after=0, fail=False))
    _wait(lambda: len(_leaves(_agent_dir(ex, agent), "memory.limit_in_bytes")) == 1, 10)
    tb, b = _in_thread(_call, ex, agent, "call-b", CODE.format(hold=2, mib=128, after=3, fail=True))
    seen = _wait(lambda: (lambda x: x if len(x) == 2 else None)(
        _leaves(_agent_dir(ex, agent), "memory.limit_in_bytes")), 10)
    pids = _leaves(_agent_dir(ex, agent, "pids"), "pids.max")
    aggregate = _read(os.path.join(_agent_dir(ex, agent), "memory.limit_in_bytes"))
    ta.join(30)
    tb.join(30)
    assert seen and sorted(int(v) for v in seen.values()) == [64 * MiB, 256 * MiB], seen
    assert sorted(pids.values()) == ["20", "30"], pids
    assert int(aggregate) == 256 * MiB            # the agent's group: the agent's current profile
    assert isinstance(a[0], StockadeError) and a[0].type == "ResourceExhausted", a
    assert a[0].data.get("resource") == "memory", a[0].data
    assert isinstance(b[0], StockadeError) and b[0].type == "NotFound", b   # not "out of memory"
    kills = ex.health()["kills"]
    assert [k["call_id"] for k in kills] == ["call-a"] and kills[0]["oom_kill"] >= 1, kills
    # the leaves are gone with their calls; the agent's group stays for the next call
    assert _wait(lambda: not [e for e in os.scandir(_agent_dir(ex, agent)) if e.is_dir()], 5)


def test_two_homes_never_share_an_agents_group(make) -> None:  # type: ignore[no-untyped-def]
    """The same agent name in two data homes, one cgroup_parent: each home's calls keep their own
    aggregate limit (64 MiB vs 256 MiB) while both run."""
    agent = f"ph{os.getpid()}"
    ex1, ex2 = make("home1", agent), make("home2", agent)
    ex1.policy = _Seq({"memory": "64MiB"})
    ex2.policy = _Seq({"memory": "256MiB"})
    t1, r1 = _in_thread(_call, ex1, agent, "h1", CODE.format(hold=3, mib=96, after=0, fail=False))
    _wait(lambda: _leaves(_agent_dir(ex1, agent), "memory.limit_in_bytes"), 10)
    t2, r2 = _in_thread(_call, ex2, agent, "h2", CODE.format(hold=2, mib=96, after=0, fail=False))
    _wait(lambda: _leaves(_agent_dir(ex2, agent), "memory.limit_in_bytes"), 10)
    d1, d2 = _agent_dir(ex1, agent), _agent_dir(ex2, agent)
    limits = (_read(os.path.join(d1, "memory.limit_in_bytes")), _read(os.path.join(d2, "memory.limit_in_bytes")))
    t1.join(30)
    t2.join(30)
    assert d1 != d2 and limits == (str(64 * MiB), str(256 * MiB)), limits
    assert isinstance(r1[0], StockadeError) and r1[0].data.get("resource") == "memory", r1
    assert r2[0] == {"mib": 96}, r2


def test_io_limits_that_cannot_be_set_fail_the_call(make) -> None:  # type: ignore[no-untyped-def]
    """A block device behind the workspace but no way to throttle it: the call fails (never a
    warning). Simulated with a device number the kernel refuses in blkio.throttle.*."""
    agent = f"pi{os.getpid()}"
    ex = make("home", agent)
    ex._agent(agent)["devices"] = ["1:3"]          # /dev/null: not a block device
    r = _call(ex, agent, "io", "result['ran'] = True")
    assert isinstance(r, StockadeError) and r.type == "SandboxUnavailable", r
    assert "io limits configured but not available" in r.message, r.message
