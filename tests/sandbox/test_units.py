"""Pure parts of the sandbox: profile parsing, cgroup limit values, mountinfo, Landlock masks,
seccomp program shape, outcome mapping. Property tests where there is an input space."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.sandbox import Profile, cgroups, landlock
from stockade.sandbox.child import landlock_spec
from stockade.sandbox.executor import map_outcome
from stockade.sandbox.profile import from_policy, parse_rate, parse_size, resolve

P = Profile(timeout=3, max_output_bytes=1000, memory=64 << 20, pids=10)


# -- profile --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,n", [("512MiB", 512 << 20), ("1GB", 10**9), ("100", 100), ("1.5KiB", 1536),
                                    (" 2 mib ", 2 << 20), (4096, 4096)])
def test_parse_size(text, n) -> None:  # type: ignore[no-untyped-def]
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "MiB", "-1", "12 parsecs", True, None, [], "1e9", -5])
def test_parse_size_rejects(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_rate() -> None:
    assert parse_rate("50MB/s") == 50_000_000 and parse_rate("25 MB / s") == 25_000_000


def test_policy_profile_defaults_and_overrides() -> None:
    base = Profile()
    assert (base.cpu, base.memory, base.pids, base.io_read, base.io_write) == (0.5, 512 << 20, 100, 50e6, 25e6)
    p = from_policy({"cpu": 1, "memory": "256MiB", "pids": 20, "io": {"read": "10MB/s", "write": "5MB/s"},
                     "tmpfs": "16MiB", "seccomp": "strict", "egress": ["api.example.com:443", "10.0.0.0/8:8080"]},
                    base)
    assert (p.cpu, p.memory, p.pids, p.io_read, p.io_write, p.tmpfs, p.seccomp) == (
        1.0, 256 << 20, 20, 10_000_000, 5_000_000, 16 << 20, "strict")
    assert p.egress_ports() == [443, 8080]


def test_resolve_takes_the_policy_mapping() -> None:
    assert resolve({"pids": 7}, Profile()).pids == 7
    assert resolve(None, Profile(pids=3)).pids == 3
    assert resolve({}, Profile(pids=3)).pids == 3
    with pytest.raises(ValueError):
        resolve({"seccomp": "off"}, Profile())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["cpu", "memory", "pids", "io", "tmpfs", "seccomp", "egress", "timeout"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=True),
                                 st.text(max_size=12), st.lists(st.text(max_size=8), max_size=3),
                                 st.dictionaries(st.sampled_from(["read", "write"]), st.text(max_size=8)))))
def test_profile_parsing_never_crashes_and_stays_sane(d) -> None:  # type: ignore[no-untyped-def]
    """Any input: a ValueError, or a profile whose limits are all usable numbers."""
    try:
        p = from_policy(d, Profile())
    except ValueError:
        return
    assert p.cpu > 0 and p.memory >= 4 << 20 and p.pids >= 2 and p.seccomp in ("default", "strict")
    assert p.io_read >= 1 and p.io_write >= 1 and p.timeout > 0
    json.dumps(p.to_dict())


# -- cgroups ----------------------------------------------------------------------------------
def test_v1_limits() -> None:
    lim = cgroups.v1_limits(Profile(), ["254:0"])
    assert ("memory.limit_in_bytes", str(512 << 20)) in lim["memory"]
    assert lim["memory"][-2] == ("memory.memsw.limit_in_bytes", str(512 << 20))   # no swap
    assert lim["pids"] == [("pids.max", "100")]
    assert lim["cpu"] == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]
    assert ("blkio.throttle.read_bps_device", "254:0 50000000") in lim["blkio"]
    assert ("blkio.throttle.write_bps_device", "254:0 25000000") in lim["blkio"]


def test_v2_limits() -> None:
    lim = dict(cgroups.v2_limits(Profile(cpu=1.5), ["8:0"]))
    assert lim == {"memory.max": str(512 << 20), "memory.swap.max": "0", "pids.max": "100",
                   "cpu.max": "150000 100000", "io.max": "8:0 rbps=50000000 wbps=25000000"}


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_parse_mountinfo() -> None:
    v1, v2 = cgroups.parse_mountinfo(MOUNTINFO)
    assert v1 == {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}
    assert v2 == ["/sys/fs/cgroup/unified"]
    assert cgroups.missing_controllers(cgroups.CgroupInfo(1, v1)) == []
    assert cgroups.missing_controllers(cgroups.CgroupInfo(2, {}, "/x", ["hugetlb"])) == ["memory", "pids", "cpu"]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_parse_mountinfo_fuzz(text) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = cgroups.parse_mountinfo(text)
    assert set(v1) <= set(cgroups.V1_CONTROLLERS) and isinstance(v2, list)


# -- Landlock ---------------------------------------------------------------------------------
def test_landlock_masks_per_abi() -> None:
    assert landlock.handled_fs(0) == 0
    assert landlock.handled_fs(1) == (1 << 13) - 1
    assert landlock.handled_fs(3) & landlock.TRUNCATE and not landlock.handled_fs(2) & landlock.TRUNCATE
    assert landlock.handled_fs(5) & landlock.IOCTL_DEV
    assert landlock.handled_net(3) == 0 and landlock.handled_net(4) == 3
    assert landlock.scopes(5) == 0 and landlock.scopes(6) == 3


def test_landlock_spec_is_least_privilege() -> None:
    spec = landlock_spec(Profile(egress=("example.com:443",)), links={"bin": "usr/bin"})
    rights = dict(spec.paths)
    for rw in ("/workspace", "/tmp", "/trash"):
        assert rights[rw] & landlock.WRITE_FILE and not rights[rw] & (landlock.MAKE_CHAR | landlock.MAKE_BLOCK)
    for ro in ("/usr", "/etc", "/shared", "/definitions", "/proc"):
        assert not rights[ro] & (landlock.WRITE_FILE | landlock.MAKE_REG | landlock.REMOVE_FILE), ro
    assert "/bin" not in rights and rights["/"] == landlock.READ_DIR
    assert spec.connect_ports == (443,)


# -- seccomp ----------------------------------------------------------------------------------
def test_seccomp_programs() -> None:
    from stockade.sandbox import seccomp

    for name in ("default", "strict"):
        progs = seccomp.build(name)
        assert len(progs) == 1 and all(len(p) % 8 == 0 and len(p) > 8 for p in progs)
    for denied in ("mount", "umount2", "pivot_root", "ptrace", "process_vm_readv", "init_module", "kexec_load",
                   "reboot", "swapon", "syslog", "settimeofday", "perf_event_open", "bpf", "userfaultfd", "keyctl",
                   "add_key", "request_key", "unshare", "setns", "io_uring_setup", "open_by_handle_at", "chroot",
                   "fsopen", "clone3", "personality", "socket", "clone", "ioctl"):
        assert denied not in seccomp.ALLOW, denied   # (socket, clone, personality, ioctl: argument rules)
    assert 150 <= len(seccomp.ALLOW) <= 240
    with pytest.raises(ValueError):
        seccomp.build("off")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_ioctl_rules_allow_everything_but_tiocsti_tioclinux(cmd) -> None:  # type: ignore[no-untyped-def]
    from stockade.sandbox.seccomp import TIOCLINUX, TIOCSTI, ioctl_allow_rules

    rules = ioctl_allow_rules((TIOCSTI, TIOCLINUX))
    for c in (cmd, cmd & 0xFFFFFFFF, TIOCSTI | (cmd & ~0xFFFFFFFF), TIOCLINUX | (cmd & ~0xFFFFFFFF), 0x5401):
        allowed = any((c & m) == v for m, v in rules)
        assert allowed == ((c & 0xFFFFFFFF) not in (TIOCSTI, TIOCLINUX)), hex(c)


# -- outcome mapping --------------------------------------------------------------------------
def _raises(header: dict, payload: bytes = b"") -> StockadeError:
    with pytest.raises(StockadeError) as ei:
        map_outcome({"status": "done", **header}, payload, P)
    return ei.value


def test_map_outcome() -> None:
    assert map_outcome({"status": "done", "code": 0}, b'{"ok": {"a": 1}}', P) == {"a": 1}
    assert _raises({"timeout": True}).type == "Timeout"
    assert _raises({"overflow": True}).data["resource"] == "output"
    assert _raises({"code": 0}, b'{"ok": {"x": "' + b"A" * 2000 + b'"}}').data["resource"] == "output"
    assert _raises({"signal": 9, "oom_kill": 1}).data["resource"] == "memory"
    assert _raises({"signal": 24}).data["resource"] == "cpu_time"
    assert _raises({"code": 1, "pids_max": 3}, b'{"error": {"type": "Internal", "message": "x"}}'
                   ).data["resource"] == "pids"
    assert _raises({"signal": 11}).type == "Internal"
    e = _raises({"code": 0}, b'{"error": {"type": "FileNotFound", "message": "m", "data": {"path": "/w"}}}')
    assert (e.type, e.message, e.data) == ("FileNotFound", "m", {"path": "/w"})
    assert _raises({}, b'{"setup_error": "landlock: x"}').type == "SandboxUnavailable"
    with pytest.raises(StockadeError) as ei:
        map_outcome({"status": "setup_error", "error": "monitor"}, b"", P)
    assert ei.value.type == "SandboxUnavailable"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["timeout", "overflow", "signal", "code", "oom_kill", "pids_max", "status"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.text(max_size=5))),
       st.binary(max_size=200))
def test_map_outcome_fuzz(header, payload) -> None:  # type: ignore[no-untyped-def]
    """Whatever a hostile child writes, the gateway gets a dict or a typed StockadeError."""
    try:
        out = map_outcome(header, payload, P)
    except StockadeError as e:
        assert e.type and isinstance(e.message, str)
    except (TypeError, ValueError):
        pytest.fail("untyped error")
    else:
        assert isinstance(out, dict)
