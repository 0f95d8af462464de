"""Test entry of the sandbox zygote: the shipped zygote plus layer-off switches, in test code only.

Started by `tests.sandbox.testing.TestingExecutor` as `python -I -B testing_zygote.py FD CONFIG`.
It runs the shipped `stockade.sandbox.zygote` after wrapping, in this process only, the steps
that apply each layer: a request's `disable` list (sent only by the TestingExecutor) then skips
those steps for that one call, so each escape test can show its attack gets through without
the layer. The shipped zygote has no such list: it applies every layer whatever it is asked.

CONFIG (JSON): `modules`, test capability files loaded into the zygote (their `implements`
registers into the zygote's implementation table); `canary`, a host file kept open (inheritable)
so the fd layer has something to catch; `os_fork`, fork with os.fork instead of the raw clone
(the zygote's constructor parameter: the shipped zygote reads no environment switch).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stockade.sandbox import child, landlock, libc, nftguard, zygote  # noqa: E402
from stockade.sandbox.cgroups import CallCgroup  # noqa: E402

OFF: set[str] = set()        # layers switched off for the request being forked
FAULTS: set[str] = set()     # injected failures for that request ("attach": cgroup attach fails)


def _skip_when(layer: str, fn: Any) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        return None if layer in OFF else fn(*a, **kw)
    return wrapper


def install(config: dict[str, Any]) -> None:
    """Wrap the layer steps and the request parser of the shipped zygote (this process only)."""
    parse, prepare = zygote._parse_request, zygote.prepare
    clone_fork, setns, spec, cgroup, attach = (libc.clone_fork, libc.setns, child.landlock_spec,
                                               zygote.Zygote._cgroup, CallCgroup.attach)

    def parse_request(fds: list[int]) -> Any:
        r = parse(fds)
        OFF.clear()
        OFF.update(r.req.get("disable") or [])
        FAULTS.clear()
        FAULTS.update(r.req.get("faults") or [])
        return r

    def prepared(init: dict[str, Any]) -> Any:
        prep, impls, status = prepare(init)
        for path in config.get("modules") or []:
            spec_ = importlib.util.spec_from_file_location(f"stockade_sandbox_test_{abs(hash(path))}", path)
            assert spec_ and spec_.loader
            mod = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(mod)
        if config.get("canary"):
            fd = os.open(config["canary"], os.O_RDONLY)
            status["canary_fd"] = fcntl.fcntl(fd, fcntl.F_DUPFD, 50)  # the leak the fd layer must catch
            os.close(fd)
        status["testing"] = True
        return prep, impls, status

    def fork(flags: int) -> int:
        return clone_fork(flags & ~libc.CLONE_NEWPID if "pidns" in OFF else flags)

    def join(fd: int, nstype: int) -> None:
        if not ("netns" in OFF and nstype == libc.CLONE_NEWNET):
            setns(fd, nstype)

    def landlock_spec(profile: Any, links: Any = None) -> Any:
        s = spec(profile, links)
        if "mounts" in OFF:   # no minimal root: keep the rules meaningful on the host tree
            s = landlock.Spec(tuple(p for p in s.paths if p[0] not in ("/workspace", "/trash")), s.connect_ports)
        return s

    def failing_attach(self: Any, pid: int = 0) -> None:
        if "attach" in FAULTS:
            raise OSError(5, "injected: cgroup attach failed")
        attach(self, pid)

    arm = zygote.Zygote._arm

    def arm_with_switches(self: Any, key: str, slot: Any) -> None:
        """A pooled child is armed with its own slot's switches (they are part of the slot key),
        never with whatever the last parsed request asked for."""
        OFF.clear()
        OFF.update(slot.req.get("disable") or [])
        FAULTS.clear()
        FAULTS.update(slot.req.get("faults") or [])
        arm(self, key, slot)

    zygote._parse_request = parse_request
    zygote.Zygote._arm = arm_with_switches  # type: ignore[method-assign]
    zygote.prepare = prepared
    zygote.Zygote._cgroup = _skip_when("cgroup", cgroup)  # type: ignore[method-assign]
    CallCgroup.attach = failing_attach  # type: ignore[method-assign]
    libc.clone_fork = fork
    libc.setns = join
    nftguard.check_output_guard = _skip_when("netns", nftguard.check_output_guard)  # part of that layer
    child.landlock_spec = landlock_spec
    child._enter_root = _skip_when("mounts", child._enter_root)
    child._become_sandbox_user = _skip_when("userns", child._become_sandbox_user)
    libc.drop_all_caps = _skip_when("caps", libc.drop_all_caps)
    libc.close_range = _skip_when("fds", libc.close_range)
    os.setsid = _skip_when("setsid", os.setsid)
    landlock.restrict = _skip_when("landlock", landlock.restrict)
    libc.load_seccomp_bpf = _skip_when("seccomp", libc.load_seccomp_bpf)


if __name__ == "__main__":
    cfg = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    install(cfg)
    sys.argv = sys.argv[:2]
    zygote.main(raw_clone=not cfg.get("os_fork"))
