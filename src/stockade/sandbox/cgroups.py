"""Per-call cgroups under a per-home, per-agent parent, written straight to cgroupfs (v1 or v2).

    <controller>/<cgroup_parent>/<home tag>/<agent>/c<pid>     (v1: memory, pids, blkio; cpu: agent)
    <cgroup2>/<cgroup_parent>/<home tag>/<agent>/c<pid>        (v2)

The agent's group carries the agent's aggregate limits (its policy profile): all of its
concurrent calls together stay inside them. Each call gets a leaf of its own with that call's
exact limits (memory and swap, pids, io; a pack call's profile can be smaller than its agent's),
so concurrent calls never share or overwrite each other's limit, and an OOM or pids kill is
counted in the leaf of the call it hit. The home tag keeps two data homes apart. CPU is a share
of the agent (`cpu:` is per agent), so on v1 the call stays in the agent's cpu group.

The limit values are computed by pure functions (`v1_limits`, `v2_limits`); the rest is a thin
shell over files. I/O limits that apply (a block device behind the workspace) but cannot be
written fail the call: they are never a silent warning.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from stockade.sandbox import Profile

V1_CONTROLLERS = ("memory", "pids", "cpu", "blkio")
V2_CONTROLLERS = ("memory", "pids", "cpu", "io")
REQUIRED_V1 = ("memory", "pids", "cpu")
CPU_PERIOD = 100_000


@dataclass
class CgroupInfo:
    version: int                               # 1, 2, or 0 (none usable)
    v1: dict[str, str] = field(default_factory=dict)    # controller -> mount point
    v2_root: str | None = None
    v2_controllers: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"version": self.version, "v1_controllers": sorted(self.v1),
                "v2_root": self.v2_root, "v2_controllers": self.v2_controllers}


def parse_mountinfo(text: str) -> tuple[dict[str, str], list[str]]:
    """Pure: /proc/self/mountinfo -> ({v1 controller: mount point}, [cgroup2 mount points])."""
    v1: dict[str, str] = {}
    v2: list[str] = []
    for line in text.splitlines():
        parts = line.split(" - ", 1)
        if len(parts) != 2:
            continue
        left, right = parts[0].split(), parts[1].split()
        if len(left) < 5 or len(right) < 3:
            continue
        mnt, fstype, opts = left[4], right[0], right[2]
        if fstype == "cgroup2":
            v2.append(mnt)
        elif fstype == "cgroup":
            for o in opts.split(","):
                if o in V1_CONTROLLERS and o not in v1:
                    v1[o] = mnt
    return v1, v2


def detect(prefer: int | None = None) -> CgroupInfo:
    """Which cgroup layout this host offers. `prefer=2` forces the v2 path (tests)."""
    with open("/proc/self/mountinfo") as f:
        v1, v2mounts = parse_mountinfo(f.read())
    v2_root = None
    v2_ctrls: list[str] = []
    for m in v2mounts:
        try:
            with open(os.path.join(m, "cgroup.controllers")) as f:
                ctrls = f.read().split()
        except OSError:
            continue
        if v2_root is None or len(ctrls) > len(v2_ctrls):
            v2_root, v2_ctrls = m, ctrls
    info = CgroupInfo(0, v1, v2_root, v2_ctrls)
    v2_ok = v2_root is not None and all(c in v2_ctrls for c in ("memory", "pids", "cpu"))
    v1_ok = all(c in v1 for c in REQUIRED_V1)
    if prefer == 2:
        info.version = 2 if v2_root else 0
    elif prefer == 1:
        info.version = 1 if v1_ok else 0
    else:
        info.version = 2 if v2_ok else 1 if v1_ok else 0
    return info


def missing_controllers(info: CgroupInfo) -> list[str]:
    """Controllers the profile needs that this layout cannot enforce (empty = complete)."""
    if info.version == 1:
        return [c for c in REQUIRED_V1 if c not in info.v1]
    if info.version == 2:
        return [c for c in ("memory", "pids", "cpu") if c not in info.v2_controllers]
    return list(REQUIRED_V1)


def v1_limits(p: Profile, devices: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Pure: controller -> [(file, value)] in the order they must be written."""
    out: dict[str, list[tuple[str, str]]] = {
        # memsw >= memory at all times: raise memory first when growing, memsw first when shrinking;
        # the shell writes memsw "-1" first to make either order valid.
        "memory": [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(p.memory)),
                   ("memory.memsw.limit_in_bytes", str(p.memory)), ("memory.swappiness", "0")],
        "pids": [("pids.max", str(p.pids))],
        "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD)),
                ("cpu.cfs_quota_us", str(max(1000, int(p.cpu * CPU_PERIOD))))],
        "blkio": [],
    }
    for d in devices:
        out["blkio"].append(("blkio.throttle.read_bps_device", f"{d} {p.io_read}"))
        out["blkio"].append(("blkio.throttle.write_bps_device", f"{d} {p.io_write}"))
    return out


def v2_limits(p: Profile, devices: list[str]) -> list[tuple[str, str]]:
    """Pure: [(file, value)] for a v2 group."""
    out = [("memory.max", str(p.memory)), ("memory.swap.max", "0"), ("pids.max", str(p.pids)),
           ("cpu.max", f"{max(1000, int(p.cpu * CPU_PERIOD))} {CPU_PERIOD}")]
    for d in devices:
        out.append(("io.max", f"{d} rbps={p.io_read} wbps={p.io_write}"))
    return out


def block_devices(paths: list[str]) -> list[str]:
    """Whole-disk MAJ:MIN of the block devices behind `paths` (none for tmpfs/overlay)."""
    out: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        maj, mnr = os.major(st.st_dev), os.minor(st.st_dev)
        if maj == 0:
            continue
        node = f"/sys/dev/block/{maj}:{mnr}"
        if not os.path.exists(node):
            continue
        if os.path.exists(os.path.join(node, "partition")):
            try:
                with open(os.path.join(os.path.realpath(node), "..", "dev")) as f:
                    dev = f.read().strip()
            except OSError:
                continue
        else:
            dev = f"{maj}:{mnr}"
        if dev not in out:
            out.append(dev)
    return out


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _kv(text: str, key: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().lstrip("-").isdigit():
            return int(v)
    return 0


class IoUnavailable(OSError):
    """I/O limits apply (a block device behind the workspace) but cannot be set."""


def _io_controller_v1(info: CgroupInfo, devices: list[str]) -> None:
    if devices and "blkio" not in info.v1:
        raise IoUnavailable(95, "io limits configured but not available (no blkio controller mounted)")


def _fresh_dir(d: str) -> None:
    """A new, empty group: one left by an earlier call with the same name (its removal failed)
    is replaced, so its counters never count against this call. FileNotFoundError when the
    agent's group is gone."""
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        os.rmdir(d)
        os.mkdir(d, 0o755)


def remove_tree(info: CgroupInfo, cgroup_parent: str) -> bool:
    """Remove every empty group under `cgroup_parent` and the parent itself (tests, uninstall)."""
    return _Group(info, cgroup_parent).remove()


def agent_rel(cgroup_parent: str, home_tag: str, agent: str) -> str:
    """Pure: the agent's group, relative to a hierarchy's root (one per home and agent)."""
    return os.path.join(cgroup_parent, home_tag, agent) if home_tag else os.path.join(cgroup_parent, agent)


class _Group:
    """One group (a relative path) in every hierarchy of a layout."""

    def __init__(self, info: CgroupInfo, rel: str):
        self.info = info
        self.rel = rel
        self.warnings: list[str] = []

    def dirs(self) -> dict[str, str]:
        if self.info.version == 1:
            return {c: os.path.join(m, self.rel) for c, m in self.info.v1.items()}
        if self.info.version == 2 and self.info.v2_root:
            return {"v2": os.path.join(self.info.v2_root, self.rel)}
        return {}

    def _write_v1(self, ctrl: str, d: str, limits: list[tuple[str, str]]) -> None:
        for fname, value in limits:
            try:
                _write(os.path.join(d, fname), value)
            except OSError as e:
                if ctrl == "blkio":
                    raise IoUnavailable(e.errno or 5, f"io limits configured but not available ({fname}: "
                                                      f"{e.strerror})") from None
                if fname == "memory.swappiness" or (
                        fname == "memory.memsw.limit_in_bytes" and not os.path.exists(os.path.join(d, fname))):
                    self.warnings.append(f"{fname}: {e.strerror}")
                    continue
                raise

    def _write_v2(self, d: str, limits: list[tuple[str, str]]) -> None:
        for fname, value in limits:
            path = os.path.join(d, fname)
            if not os.path.exists(path):
                if fname.startswith("io."):
                    raise IoUnavailable(95, "io limits configured but not available (no io controller in "
                                            "this cgroup2 hierarchy)")
                raise OSError(2, f"{fname} missing: controller not enabled in this cgroup2 hierarchy")
            _write(path, value)

    def attach(self, pid: int = 0) -> None:
        """Move `pid` (0 = the caller) into this group in every controller."""
        for _ctrl, d in self.dirs().items():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def counters(self) -> dict[str, int]:
        """oom kills and pid-limit hits in this group so far (to attribute a child's death)."""
        dirs = self.dirs()
        if self.info.version == 1:
            return {"oom_kill": _kv(_read(os.path.join(dirs.get("memory", ""), "memory.oom_control")), "oom_kill"),
                    "pids_max": _kv(_read(os.path.join(dirs.get("pids", ""), "pids.events")), "max")}
        if self.info.version == 2:
            d = dirs["v2"]
            return {"oom_kill": _kv(_read(os.path.join(d, "memory.events")), "oom_kill"),
                    "pids_max": _kv(_read(os.path.join(d, "pids.events")), "max")}
        return {"oom_kill": 0, "pids_max": 0}

    def memory_bytes(self) -> int:
        """Memory charged to this group now (a pre-armed child's cost, for the pool's budget)."""
        dirs = self.dirs()
        if self.info.version == 1:
            text = _read(os.path.join(dirs.get("memory", ""), "memory.usage_in_bytes")).strip()
        else:
            text = _read(os.path.join(dirs.get("v2", ""), "memory.current")).strip() if dirs else ""
        return int(text) if text.isdigit() else 0

    def procs(self) -> list[int]:
        """Every process in this group and the groups below it."""
        out: set[int] = set()
        for d in self.dirs().values():
            for root, _subdirs, _files in os.walk(d):
                for tok in _read(os.path.join(root, "cgroup.procs")).split():
                    out.add(int(tok))
        return sorted(out)

    def kill_all(self) -> None:
        """v2: cgroup.kill; v1: SIGKILL every member."""
        dirs = self.dirs()
        if self.info.version == 2 and os.path.exists(os.path.join(dirs["v2"], "cgroup.kill")):
            _write(os.path.join(dirs["v2"], "cgroup.kill"), "1")
            return
        for pid in self.procs():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)

    def remove(self) -> bool:
        """Remove this group and any empty group below it. True when nothing is left."""
        left = False
        for d in self.dirs().values():
            for root, _subdirs, _files in os.walk(d, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    try:
                        os.rmdir(root)
                    except OSError:
                        left = True
        return not left


class AgentCgroup(_Group):
    """The agent's group (aggregate limits); `ensure` is idempotent and re-applies them."""

    def __init__(self, info: CgroupInfo, parent: str, agent: str, home_tag: str = ""):
        super().__init__(info, agent_rel(parent, home_tag, agent))
        self.parent = os.path.dirname(self.rel)

    def ensure(self, p: Profile, devices: list[str]) -> None:
        """Create the group and write the limits (raises OSError when a limit cannot be set)."""
        self.warnings = []
        if self.info.version == 1:
            _io_controller_v1(self.info, devices)
            lim = v1_limits(p, devices)
            for ctrl, d in self.dirs().items():
                os.makedirs(d, mode=0o755, exist_ok=True)
                self._write_v1(ctrl, d, lim.get(ctrl, []))
        elif self.info.version == 2:
            self._delegate()
            self._write_v2(self.dirs()["v2"], v2_limits(p, devices))
        else:
            raise OSError(95, "no usable cgroup hierarchy")

    def _delegate(self) -> None:
        """v2: create the agent's group and delegate the controllers at every level down to it
        (its calls' leaves need them; the agent's group itself holds no process)."""
        root = self.info.v2_root or ""
        os.makedirs(os.path.join(root, self.rel), mode=0o755, exist_ok=True)
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in self.info.v2_controllers)
        if not enable:
            return
        level = root
        for part in ["", *self.rel.split("/")]:
            level = os.path.join(level, part) if part else level
            with contextlib.suppress(OSError):
                _write(os.path.join(level, "cgroup.subtree_control"), enable)

    def call(self, name: str) -> CallCgroup:
        return CallCgroup(self, name)


class CallCgroup(_Group):
    """One call's leaf below its agent's group, with the call's own limits."""

    # v1 controllers with a leaf per call; cpu stays the agent's (a share of the agent)
    V1_LEAF = ("memory", "pids", "blkio")

    def __init__(self, agent: AgentCgroup, name: str):
        super().__init__(agent.info, os.path.join(agent.rel, name))
        self.agent = agent

    def dirs(self) -> dict[str, str]:
        d = super().dirs()
        if self.info.version == 1:
            return {c: (v if c in self.V1_LEAF else os.path.join(self.info.v1[c], self.agent.rel))
                    for c, v in d.items()}
        return d

    def leaf_dirs(self) -> dict[str, str]:
        """The directories this call owns (created per call and removed after it)."""
        d = self.dirs()
        return {c: v for c, v in d.items() if self.info.version != 1 or c in self.V1_LEAF}

    def create(self, p: Profile, devices: list[str]) -> None:
        """Make the leaf and write the call's limits. FileNotFoundError: the agent's group is gone."""
        if self.info.version == 1:
            _io_controller_v1(self.info, devices)
            lim = v1_limits(p, devices)
            for ctrl, d in self.leaf_dirs().items():
                _fresh_dir(d)
                self._write_v1(ctrl, d, [x for x in lim.get(ctrl, []) if x[0] != "memory.swappiness"])
        elif self.info.version == 2:
            d = self.dirs()["v2"]
            _fresh_dir(d)
            self._write_v2(d, [x for x in v2_limits(p, devices) if not x[0].startswith("cpu.")])
        else:
            raise OSError(95, "no usable cgroup hierarchy")

    def remove(self) -> bool:
        left = False
        for d in self.leaf_dirs().values():
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left = True
        return not left
