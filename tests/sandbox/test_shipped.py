"""The shipped zygote and executor, exactly as `stockade serve` starts them (no test entry).

* Layer-off switches live in test code only: the shipped zygote applies every layer whatever its
  environment and whatever a request asks for (issue 13, "test switches in the shipped code").
* Nothing inside the sandbox names a host path: not the data home, not the install (issue 13,
  "host paths inside the sandbox").
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.conftest import need, need_root

import stockade
from stockade.cli.volume import AUTO, init_volume
from stockade.core import volume
from stockade.core.types import Caller
from stockade.sandbox import cgroups

pytestmark = pytest.mark.root

ALL_LAYERS = ("cgroup", "pidns", "netns", "mounts", "userns", "caps", "fds", "setsid", "landlock", "seccomp",
              "output")


class _Pol:
    def __init__(self, d: dict[str, Any]):
        self.d = d

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        return self.d


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The shipped SandboxExecutor + zygote; the environment carries every old test switch."""
    need_root()
    need(all(os.path.exists(f"/usr/bin/{c}") for c in ("sh", "bash", "python3")), "needs sh, bash, python3 in /usr/bin")
    canary = tmp_path / "canary"
    canary.write_text("x")
    monkeypatch.setenv("STOCKADE_SANDBOX_TESTING", "1")
    monkeypatch.setenv("STOCKADE_SANDBOX_TEST_CANARY", str(canary))
    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.service import init_home
    from stockade.sandbox import agentns
    from stockade.sandbox.executor import SandboxExecutor

    home = Home.at(tmp_path / "home")
    init_home(home)
    init_volume(home, AUTO, new_home=True)      # what `stockade init` does as root
    db = home.db()
    name = f"sh{os.getpid()}"
    agents.create(db, name)
    parent = f"stockade-sh-{os.getpid()}"
    asked: list[tuple[str, ...]] = []

    class Asking(SandboxExecutor):
        """Only puts a layer-off list into every request; the zygote is the shipped one."""

        async def _call(self, req: dict[str, Any], *a: Any, **kw: Any) -> dict[str, Any]:
            req = {**req, "disable": list(asked[-1]) if asked else []}
            return await super()._call(req, *a, **kw)

    ex = Asking(home, call_timeout=10, cgroup_parent=parent)
    ex.db = db
    ex.policy = _Pol({"memory": "64MiB", "pids": 32})
    ex.start_zygote()
    caller = Caller(name, b"", "s", "test")
    run_def = SimpleNamespace(name="process.run", pack=None)

    def run(argv: list[str], off: tuple[str, ...] = ()) -> dict[str, Any]:
        asked.append(off)
        return asyncio.run(ex.run(caller, run_def, {"argv": argv}, "call"))

    try:
        yield SimpleNamespace(run=run, ex=ex, home=home, name=name, canary=canary)
    finally:
        ex.stop()
        agentns.remove(name, home)
        cgroups.remove_tree(cgroups.detect(), parent)
        db.close()
        volume.unmount(home)


def _status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


PROBE = ("cat /proc/self/status; echo ---; ls /proc; echo ---; ls /; echo ---; cat /proc/net/dev; echo ---; "
         "ls -l /proc/self/fd/; echo ---; bash -c 'echo > /dev/tcp/127.0.0.1/9' 2>&1; echo ---; "
         "cat /proc/self/sessionid /proc/self/stat")


def test_shipped_zygote_ignores_layer_switches(shipped) -> None:  # type: ignore[no-untyped-def]
    """STOCKADE_SANDBOX_TESTING=1 in the environment and every layer asked off: all still applied."""
    for off in (ALL_LAYERS, ()):
        r = shipped.run(["sh", "-c", PROBE], off=off)
        status, procs, root, netdev, fds, tcp, _ = r["stdout"].split("---\n")
        st = _status(status)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", st            # seccomp, no_new_privs
        assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0, st    # caps
        assert st["Uid"].split()[0] == "1100", st                               # userns
        assert sorted(int(p) for p in procs.split() if p.isdigit())[0] == 1     # pidns: P is pid 1
        assert len([p for p in procs.split() if p.isdigit()]) < 6, procs
        assert "workspace" in root.split() and "home" not in root.split()       # mounts
        assert [ln.split(":")[0].strip() for ln in netdev.splitlines()[2:]] == ["lo"]  # netns
        assert str(shipped.canary) not in fds                                   # fds
        assert "Permission denied" in tcp, tcp                                  # landlock
    r = shipped.run(["python3", "-c", "b = b'x' * (300 << 20)"], off=ALL_LAYERS)  # cgroup: 64 MiB, no swap
    assert r["signal"] == 9 or "MemoryError" in r["stderr"], r


def _host_paths(home: Path) -> list[str]:
    """Paths that must never appear inside the sandbox: the data home and the install."""
    pkg = Path(stockade.__file__).resolve().parent
    out = {str(home.root), str(home.root.resolve()), str(pkg), str(pkg.parent), sys.prefix, sys.base_prefix,
           os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(p for p in out if p not in ("/", "/usr", "/usr/bin", "/bin", "/usr/local"))


LEAK_FILES = ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/self/mountstats", "/proc/1/mountinfo",
              "/proc/1/cmdline", "/proc/1/environ", "/proc/1/status", "/proc/1/comm", "/proc/self/cgroup",
              "/proc/1/cgroup", "/proc/self/environ", "/proc/self/cmdline", "/proc/self/maps",
              "/proc/self/cpuset", "/proc/1/cpuset")


BOUND = ("/workspace", "/trash", "/shared", "/pack")   # bind mounts of data-home directories


def _bind_root_lines(out: str) -> list[str]:
    """mountinfo lines of the data-home bind mounts (field 5 is the mount point)."""
    return [ln for ln in out.splitlines() if len(ln.split()) > 5 and ln.split()[4] in BOUND]


def test_no_host_path_inside_the_sandbox(shipped) -> None:  # type: ignore[no-untyped-def]
    """From a process.run command: the proc files that name mounts, processes and cgroups.

    PID 1's cmdline and environ (the zygote's interpreter and install path before), the
    definitions mount (a bind of the install before, a copy now), cgroups, and the roots of
    the data-home bind mounts (the kernel prints a bind's root as its path within its
    filesystem: with the home's volume that is `/workspaces/<agent>`, not the host path)."""
    assert volume.status(shipped.home)["bound"] == dict.fromkeys(volume.VOLUME_DIRS, True)
    script = "; ".join(f"echo '=== {f}'; cat {f} | tr '\\0' ' '" for f in LEAK_FILES)
    script += "; echo '=== links'; ls -l /proc/1/ /proc/self/ 2>&1; pwd; echo $PATH $HOME"
    r = shipped.run(["sh", "-c", script])
    out = r["stdout"] + r["stderr"]
    assert "=== /proc/self/mountinfo" in out and "/workspace" in out   # the files were read
    assert "stockade-sandbox" in out                                    # PID 1's cmdline, neutral
    binds = _bind_root_lines(out)
    assert {ln.split()[4] for ln in binds} >= {"/workspace", "/trash", "/shared"}, out
    assert {ln.split()[3] for ln in binds} >= {f"/workspaces/{shipped.name}", f"/trash/{shipped.name}"}, binds
    for p in _host_paths(shipped.home):
        assert p not in out, (p, [ln for ln in out.splitlines() if p in ln])


def test_a_home_without_a_volume_names_itself_and_doctor_says_so(shipped) -> None:  # type: ignore[no-untyped-def]
    """The control: the same binds straight from the home's filesystem (`--volume none`) name
    the home in mountinfo, which is why the volume exists, and doctor reports it degraded."""
    from stockade.sandbox.setup import host_paths_check

    assert host_paths_check(shipped.home.root)["status"] == "ok"
    volume.unmount(shipped.home)
    shipped.ex.stop()
    shipped.ex.start_zygote()     # a zygote forked before the unmount still sees the binds
    check = host_paths_check(shipped.home.root)
    assert check["status"] == "degraded" and str(shipped.home.root) in check["hint"], check
    r = shipped.run(["cat", "/proc/self/mountinfo"])
    assert _bind_root_lines(r["stdout"])
    assert str(shipped.home.root) in r["stdout"]
