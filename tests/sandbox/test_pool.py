"""The pool of pre-armed children (issue 16), on the real kernel with the shipped zygote.

A pooled child has every layer applied before its call and is indistinguishable from a cold
one to the code it runs; it serves exactly one call; it is never handed to another agent or
another profile; a child armed before a change (profile edited, policy reloaded, egress
changed, agent revoked) is never used after it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_root
from tests.sandbox import attack_caps
from tests.sandbox.conftest import ATTACK_FILE, PRELUDE
from tests.sandbox.testing import wait_ready

from stockade.core.types import Caller
from stockade.sandbox import cgroups, pool
from stockade.sandbox.setup import invalidated_by

pytestmark = pytest.mark.root
PARENT = f"stockade-pool-{os.getpid()}"

# What code inside the sandbox can see of its own process: every layer leaves a trace here.
SNAPSHOT = """
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return line.split(':', 1)[1].strip()
result['pid'] = os.getpid()
result['procs'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
result['fds'] = sorted(int(x) for x in os.listdir('/proc/self/fd'))
result['fd3'] = os.readlink('/proc/self/fd/3')[:5]
result['ids'] = [os.getuid(), os.getgid(), os.getgroups()]
result['status'] = {k: status(k) for k in ('Seccomp', 'Seccomp_filters', 'NoNewPrivs', 'CapEff', 'CapPrm',
                                           'CapBnd', 'CapAmb', 'Uid', 'Gid', 'NSpid')}
result['mounts'] = sorted(l.split()[4] for l in open('/proc/self/mountinfo'))
result['tmp'] = sorted(os.listdir('/tmp'))
result['tmp_size'] = os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize
result['env'] = dict(os.environ)
result['cwd'] = os.getcwd()
result['host'] = attempt(lambda: os.listdir('/home'))
result['sid'] = os.getsid(0) == os.getpid()
result['hostname'] = os.uname().nodename
result['rlimits'] = [__import__('resource').getrlimit(r) for r in (0, 4, 7)]
open('/tmp/left-by-%d' % time.time_ns(), 'w').write('x')
"""


class _Policy:
    """The agent's `sandbox:` mapping, editable between calls (a reload)."""

    def __init__(self) -> None:
        self.spec: dict[str, Any] = {"tmpfs": "8MiB", "memory": "128MiB", "pids": 32}

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return dict(self.spec)


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[Any]:
    """(executor with the pool on, call(agent) -> (result, child), agents a and b)."""
    need_root()
    from tests.sandbox.testing import TestingExecutor

    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns

    home = Home.at(tmp_path / "home")
    init_home(home)
    db = home.db()
    names = [f"pa{os.getpid()}", f"pb{os.getpid()}"]
    for n in names:
        agents.create(db, n)
    ex = TestingExecutor(home, call_timeout=20, cgroup_parent=PARENT, modules=(ATTACK_FILE,), pool=True)
    ex.db = db
    ex.policy = _Policy()
    for n in names:
        ex._agent(n)
    ex.start_zygote()
    d = {x.name: x for x in attack_caps.definitions()}["test.pyexec"]

    def call(agent: str, code: str = SNAPSHOT) -> tuple[dict[str, Any], dict[str, Any]]:
        out = asyncio.run(ex.run(Caller(agent, b"", "s", "test"), d, {"code": PRELUDE + code}, "c"))
        return out, dict(ex.last_child)

    try:
        yield ex, call, names
    finally:
        ex.stop()
        for n in names:
            agentns.remove(n, home)
        cgroups.remove_tree(cgroups.detect(), PARENT)
        db.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_pooled_child_is_a_fresh_sandbox_and_serves_one_call(pooled) -> None:  # type: ignore[no-untyped-def]
    """Cold call, then calls served by pre-armed children: what the code sees is the same (every
    layer, fds, ids, mounts, /tmp, env, cwd, rlimits); each child serves one call and is gone."""
    ex, call, (a, _b) = pooled
    cold, first = call(a)
    assert first["pooled"] is False
    assert cold["pid"] == 1 and cold["procs"] == [1] and cold["fds"] == [0, 1, 2, 3, 4], cold
    assert cold["status"]["Seccomp"] == "2" and cold["status"]["CapEff"] == "0000000000000000", cold
    assert cold["host"]["ok"] is False and cold["tmp"] == [] and cold["ids"] == [1100, 1100, []], cold
    used: set[int] = set()
    for _ in range(3):
        armed = wait_ready(ex)
        assert armed and not used & set(armed), (armed, used)
        warm, child = call(a)
        assert child == {"pid": armed[0], "pooled": True}, (child, armed)
        assert warm == cold, (warm, cold)
        used.add(child["pid"])
    assert _gone(used)          # one call each, then reaped (after the answer: P's exit is off the path)
    assert ex.health()["pool"]["enabled"] is True and ex.health()["pool"]["hits"] >= 3


def _gone(pids: set[int] | list[int], within: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# Forks a process that leaves the handler's session, lets go of the result pipe and keeps
# appending the time (CLOCK_MONOTONIC: the same clock as the host's) to the workspace.
LINGER = """
pid = os.fork()
if pid == 0:
    os.setsid()
    os.close(3)      # not holding the result pipe: its EOF does not wait for this process
    fd = os.open('/workspace/linger', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        os.write(fd, b'%d\\n' % time.monotonic_ns())
        time.sleep(0.0002)      # not burning the call's CPU quota (a throttled writer proves nothing)
result['forked'] = pid
time.sleep(0.05)
"""


@pytest.mark.parametrize("warm", [False, True])
def test_nothing_of_a_call_runs_after_its_answer(pooled, warm: bool) -> None:  # type: ignore[no-untyped-def]
    """The gateway answers on the result's EOF, before P exits and before the zygote's report:
    P kills and reaps everything in its pid namespace first, so a process the call left
    behind (in a session of its own, without the result pipe) wrote its last before the answer."""
    import time

    ex, call, (a, _b) = pooled
    if warm:
        call(a, "result['x'] = 1")
        wait_ready(ex)
    d = {x.name: x for x in attack_caps.definitions()}["test.pyexec"]

    async def answered() -> tuple[dict[str, Any], int]:
        out = await ex.run(Caller(a, b"", "s", "test"), d, {"code": PRELUDE + LINGER}, "c")
        return out, time.monotonic_ns()

    out, at = asyncio.run(answered())
    assert ex.last_child["pooled"] is warm and out["forked"] > 1, (ex.last_child, out)
    lines = (Path(ex._agent(a)["workspace"]) / "linger").read_bytes().split()
    assert lines and int(lines[-1]) < at, (int(lines[-1]) - at) / 1e6


def test_a_child_is_never_handed_to_another_agent(pooled) -> None:  # type: ignore[no-untyped-def]
    """A child armed for agent a stays a's: b's call runs elsewhere, as b, in b's workspace."""
    ex, call, (a, b) = pooled
    call(a, "open('/workspace/only-a', 'w').write('a')")
    armed_a = wait_ready(ex)
    out, child = call(b, "result['ws'] = os.listdir('/workspace'); result['uid'] = open('/proc/self/uid_map').read()")
    assert child["pid"] not in armed_a and child["pooled"] is False, (child, armed_a)
    assert "only-a" not in out["ws"]
    assert out["uid"].split()[1] == str(ex._agent(b)["uid"]), out
    assert set(armed_a) <= set(wait_ready(ex, 2))    # still a's, now beside b's own
    out, child = call(a, "result['ws'] = os.listdir('/workspace')")
    assert child["pid"] in armed_a and "only-a" in out["ws"], (child, out)


@pytest.mark.parametrize("change", ["profile", "policy.reloaded", "egress.changed", "agent.revoked"])
def test_a_child_armed_before_a_change_is_never_used_after_it(pooled, change: str) -> None:  # type: ignore[no-untyped-def]
    """A profile edit changes the slot: the old child can never match, and the agent's first call
    under the new profile kills it. The events the gateway wires to `invalidate` kill the agent's
    armed children before anything else runs."""
    ex, call, (a, _b) = pooled
    call(a)
    armed = wait_ready(ex)
    assert armed
    if change == "profile":
        ex.policy.spec["tmpfs"] = "16MiB"
    else:
        data = {"agent": a} if change == "agent.revoked" else {"updated": [a], "added": [], "removed": []}
        for who in invalidated_by(change, data):
            asyncio.run(ex.invalidate(who))
        assert not any(_alive(p) for p in armed), armed   # killed at once, unused
    out, child = call(a)
    assert child["pid"] not in armed, (child, armed)
    if change == "profile":
        assert out["tmp_size"] == 16 << 20, out["tmp_size"]
        assert not any(_alive(p) for p in armed), armed   # the new slot superseded the old one
    assert not set(armed) & set(wait_ready(ex)), "an old child came back into the pool"


def test_slot_keys_and_sizing() -> None:
    """Pure rules: per-call fields never split a slot; anything that shapes the sandbox does;
    packs and requests without the pool flag run cold; an idle slot wants none, a busy one a
    few (bounded), a failing one none for a while."""
    req = {"pool": True, "agent": "a", "profile": {"memory": 1}, "binds": {"workspace": "/w", "trash": "/t"},
           "call_id": "1", "capability": "x", "pool_gen": [0, 0]}
    k = pool.slot_key(req, [1, 2])
    assert k == pool.slot_key({**req, "call_id": "2", "capability": "y", "trace": True}, [1, 2])
    for other in ({"agent": "b"}, {"profile": {"memory": 2}}, {"pool_gen": [0, 1]}, {"disable": ["seccomp"]},
                  {"binds": {"workspace": "/w2", "trash": "/t"}}, {"host_uid": 5}):
        assert pool.slot_key({**req, **other}, [1, 2]) != k, other
    assert pool.slot_key(req, [1, 3]) != k                     # namespace re-created: new inode
    assert pool.slot_key({**req, "handler": "pack"}, [1, 2]) is None
    assert pool.slot_key({**req, "pool": False}, [1, 2]) is None
    d = pool.Demand()
    assert pool.target(d, 1000.0) == 0                          # never used
    for _ in range(9):
        d.begin(1000.0)
    assert pool.target(d, 1000.0) == pool.PER_SLOT_MAX          # busy: bounded
    for _ in range(9):
        d.end()
    assert pool.target(d, 1000.0 + pool.IDLE_S + 1) == 0        # idle again
    d.begin(2000.0)
    d.failed_at = 2000.0
    assert pool.target(d, 2001.0) == 0


def test_invalidating_events() -> None:
    assert invalidated_by("agent.revoked", {"agent": "x"}) == ["x"]
    assert invalidated_by("policy.reloaded", {}) == [None]
    assert invalidated_by("egress.changed", {"added": ["x"], "updated": ["y.pack"], "removed": [],
                                             "repaired": []}) == ["x", "y"]
    assert invalidated_by("egress.changed", {"repaired": ["host"]}) == [None]
    assert invalidated_by("call.denied", {"agent": "x"}) == []


def test_the_gateway_serves_from_the_pool_and_health_shows_it(sbx) -> None:  # type: ignore[no-untyped-def]
    """Through the real gateway (pool on by default): repeat calls hit the pool, and
    system.health's sandbox layer reports it (ready children, hits, memory, bounds)."""
    import time

    before = sbx.invoke("system.health", {})["result"]["layers"]["sandbox"]["pool"]
    assert before["enabled"] is True, before
    deadline = time.monotonic() + 60
    while True:
        sbx.run("result['x'] = 1")
        now = sbx.invoke("system.health", {})["result"]["layers"]["sandbox"]["pool"]
        if now["hits"] > before.get("hits", 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert now["hits"] > before.get("hits", 0), (before, now)
    assert now["max"] == pool.TOTAL_MAX and now["budget_bytes"] == pool.BUDGET_BYTES, now
    assert now["ready"] + now["arming"] <= pool.TOTAL_MAX, now


def test_a_child_that_cannot_be_armed_is_never_served(pooled) -> None:  # type: ignore[no-untyped-def]
    """Arming fails (injected: the cgroup attach fails): the pool counts the failure, holds no
    half-armed child, backs off, and the call itself runs cold and reports SandboxUnavailable."""
    import time

    from stockade.core.errors import StockadeError

    ex, call, (a, _b) = pooled
    ex.faults = {"attach"}
    with pytest.raises(StockadeError) as e:
        call(a, "result['x'] = 1")
    assert e.value.type == "SandboxUnavailable"
    deadline = time.monotonic() + 30
    while (st := asyncio.run(ex.pool_stats())["pool"])["failures"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st["failures"] >= 1 and st["ready"] == 0 and st["arming"] == 0, st
    assert "injected" in st["last_error"], st
    with pytest.raises(StockadeError) as e:
        call(a, "result['x'] = 1")
    assert e.value.type == "SandboxUnavailable" and ex.last_child == {}, ex.last_child


def _zygote_children(zygote: int) -> set[int]:
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/status") as f:
                    if f"\nPPid:\t{zygote}\n" in f.read():
                        out.add(int(p))
            except OSError:
                pass
    return out


def test_a_policy_reload_kills_the_armed_children_through_the_gateway(sbx) -> None:  # type: ignore[no-untyped-def]
    """The gateway's wiring, end to end: SIGHUP reloads the policy, policy.reloaded reaches the
    sandbox part, and every child armed before it is killed unused, long before the pool's own
    30 s idle limit would have ended it."""
    import signal
    import time

    zygote = sbx.invoke("system.health", {})["result"]["layers"]["sandbox"]["zygote_pid"]
    deadline = time.monotonic() + 30
    while not (armed := _zygote_children(zygote)) and time.monotonic() < deadline:
        sbx.run("result['x'] = 1")
        time.sleep(0.2)
    assert armed, "no pre-armed child appeared"
    sbx.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15                      # < pool.IDLE_S: only the event can do it
    while any(_alive(p) for p in armed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in armed), armed


def test_only_a_complete_ok_result_is_answered_before_the_report() -> None:
    """Pure: the payload alone decides only a finished `ok`; an error, a setup failure, a cut-off
    or empty payload waits for the zygote's report (kills, timeouts, exit status), and so does
    any pack call (its code runs in P and need not drain)."""
    from stockade.sandbox.executor import early_result

    assert early_result(b'{"ok": {"a": 1}, "trace": []}') == {"a": 1}
    assert early_result(b'{"ok": {"a": 1}}', {"capability": "x"}) == {"a": 1}
    assert early_result(b'{"ok": {"a": 1}}', {"handler": "pack"}) is None     # pack code runs in P
    for payload in (b"", b'{"ok": {"a": 1', b'{"ok": 5}', b'{"error": {"type": "NotFound"}}',
                    b'{"setup_error": "x"}', b'{"ok": {}, "setup_error": "x"}', b'{"ok":{"a":1}}'):
        assert early_result(payload) is None, payload


def test_per_call_fields_never_shape_the_sandbox() -> None:
    """Pure: the message carries only the call's own fields; anything else in it is dropped, so a
    call can never change the envelope (profile, binds, agent) the zygote parsed and cached."""
    from stockade.sandbox.zygote import per_call_fields

    assert per_call_fields(b"call") == {}
    got = per_call_fields(b'call {"call_id": "c1", "capability": "x.y", "trace": true, "agent": "b", '
                          b'"profile": {}, "args": {"k": "secret"}}')
    assert got == {"call_id": "c1", "capability": "x.y", "trace": True}, got
    with pytest.raises(ValueError):
        per_call_fields(b"call []")


def test_a_cached_envelope_is_parsed_once_and_never_shared() -> None:
    """The zygote's parse cache: the same envelope bytes give equal requests, each a fresh dict
    (a call's own fields written into one never reach the next), and the cache stays bounded."""
    import json

    from stockade.sandbox import zygote

    env = json.dumps({"agent": "a", "profile": {"memory": 1 << 26}, "binds": {}}).encode()

    def parse() -> Any:
        fd = os.memfd_create("t")
        os.write(fd, env)
        fds = [fd] + [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        r = zygote._parse_request(fds)
        r.close()
        return r

    a = parse()
    a.req["call_id"] = "first"
    b = parse()
    assert b.req == {"agent": "a", "profile": {"memory": 1 << 26}, "binds": {}} and b.profile is a.profile
    assert env in zygote._PARSED and len(zygote._PARSED) <= zygote.PARSED_MAX


def test_a_cancelled_call_never_leaves_its_answer_to_the_next(tmp_path: Path) -> None:
    """A call cancelled while the zygote has not answered yet (client gone): the answer still
    comes, and the next request must get its own, not that one (real sockets, a stand-in
    zygote that answers its first message late)."""
    import json
    import socket
    import threading

    from stockade.core.home import Home
    from stockade.sandbox.executor import SandboxExecutor

    ex = SandboxExecutor(Home.at(tmp_path / "home"))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    ex.sock = ours

    def zygote() -> None:
        import time

        for delay in (0.3, 0.0):
            msg = theirs.recv(4096)
            time.sleep(delay)
            theirs.send(json.dumps({"for": msg.decode()}).encode())

    t = threading.Thread(target=zygote, daemon=True)
    t.start()

    async def main() -> dict[str, Any]:
        ex.lock = asyncio.Lock()
        loop = asyncio.get_running_loop()

        async def hand_off(msg: bytes) -> dict[str, Any]:
            assert ex.lock is not None
            async with ex.lock:
                return await ex._hand_off(loop, [], msg)

        first = asyncio.create_task(hand_off(b"one"))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await hand_off(b"two")

    try:
        assert asyncio.run(main()) == {"for": "two"}
    finally:
        t.join(5)
        ours.close()
        theirs.close()
