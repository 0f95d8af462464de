"""A long-lived sandbox: one confined process for its whole life (an upstream MCP server).

The per-call sandbox (`child`, `zygote`) forks a fresh child per call and kills it at a
deadline. An upstream server runs for hours and speaks on its stdin/stdout, so it gets its own
launcher, run by the gateway as a fresh interpreter (`python -I -B -m stockade.sandbox.longlived`,
as root, nothing of the gateway's memory) with the same layers, applied in the same order:

    launcher (root): read the spec (first line of stdin), PDEATHSIG, join the server's cgroup
        leaf (memory, pids, cpu, io limits), join its network namespace (only `lo`, or the
        egress part's rules for exactly its allowlist), build the seccomp program,
        unshare(pid), fork -> S; wait for S and exit with its status
    S (pid 1 of the new pid namespace): unshare(mount|uts|ipc|cgroup), a minimal root
        (the per-call template: /usr /bin /lib ro, a small /etc, /dev) plus a tmpfs /tmp and
        the configured host directories at their own paths (ro or rw), pivot_root, /proc,
        hostname, drop to the host uid and map it to 1100 in a new user namespace, drop caps,
        no_new_privs, close every fd but 0 1 2, setsid, rlimits, Landlock (read/execute on the
        system and ro directories, write only on /tmp and rw directories, TCP connect only to the
        allowlist's ports, no bind), seccomp (the per-call default allowlist, last), execve.

stdin/stdout stay the gateway's pipes (the MCP stdio transport); stderr is the gateway's log
pipe. Killing the launcher kills S (PDEATHSIG), and S's death kills every process of the server
(pid namespace). A setup failure is one JSON line on stderr, `{"setup_error": ...}`, exit 70.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
from dataclasses import dataclass

# Where a configured directory may not be mounted: the template's own directories.
RESERVED = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev", "/proc",
            "/tmp", "/workspace", "/trash", "/shared", "/definitions", "/pack")
SETUP_ERROR_EXIT = 70


@dataclass(frozen=True)
class Bind:
    """A host directory the server sees at the same path, read-only or not."""

    path: str
    ro: bool = True
    at: str = ""            # where the server sees it (default: the same path)

    @property
    def target(self) -> str:
        return self.at or self.path


@dataclass(frozen=True)
class Spec:
    """Everything the launcher needs (JSON on the first line of its stdin). Pure data."""

    argv: tuple[str, ...]
    env: dict[str, str]
    uid: int
    gid: int
    netns: str
    cgroup_procs: tuple[str, ...] = ()     # cgroup.procs files of the server's leaf, one per hierarchy
    binds: tuple[Bind, ...] = ()
    tmpfs: int = 64 * 1024 * 1024
    connect_ports: tuple[int, ...] = ()
    seccomp: str = "default"
    cwd: str = "/tmp"
    root_parent: str = "/run"
    nofile: int = 1024
    hosts_file: str = ""                   # a host file shown read-only as /etc/hosts (kept fresh by the gateway)

    def to_json(self) -> str:
        d = {**self.__dict__, "binds": [[b.path, b.ro, b.at] for b in self.binds]}
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Spec:
        d = json.loads(text)
        d["argv"] = tuple(d["argv"])
        d["cgroup_procs"] = tuple(d.get("cgroup_procs") or ())
        d["connect_ports"] = tuple(d.get("connect_ports") or ())
        d["binds"] = tuple(Bind(str(b[0]), bool(b[1]), str(b[2]) if len(b) > 2 else "") for b in d.get("binds") or ())
        return cls(**d)


def check_bind(path: str) -> str | None:
    """Pure: why `path` cannot be a configured directory (None when it can)."""
    if not path.startswith("/") or "\0" in path:
        return "must be an absolute path"
    norm = os.path.normpath(path)
    if norm != path:
        return f"must be written in normal form ({norm})"
    for r in RESERVED:
        if norm == r or (r != "/" and norm.startswith(r + "/") and r != "/tmp"):
            return f"{r} is part of the sandbox's own root"
    return None


def landlock_paths(binds: tuple[Bind, ...], system_links: dict[str, str]) -> list[tuple[str, int]]:
    """Pure: the Landlock rules of a long-lived sandbox (writable directories are not executable)."""
    from stockade.sandbox import child, landlock

    WRITABLE = landlock.RW & ~landlock.EXECUTE   # noqa: N806 - what a server writes it cannot run
    paths: list[tuple[str, int]] = [(f"/{d}", landlock.RX) for d in child.SYSTEM_DIRS if d not in system_links]
    paths += [("/", landlock.READ_DIR), ("/etc", landlock.RO), ("/proc", landlock.RO),
              ("/dev", landlock.READ_FILE | landlock.WRITE_FILE | landlock.READ_DIR), ("/tmp", WRITABLE)]
    paths += [(b.target, landlock.RX if b.ro else WRITABLE) for b in binds]
    return paths


# -- the launcher (root) ------------------------------------------------------------------------
def _read_spec_line() -> bytes:
    """The first line of stdin, read byte by byte: what follows belongs to the server."""
    buf = bytearray()
    while len(buf) < 1 << 20:
        b = os.read(0, 1)
        if not b or b == b"\n":
            return bytes(buf)
        buf += b
    raise ValueError("spec line too long")


def _fail(step: str, e: BaseException) -> None:
    msg = json.dumps({"setup_error": f"{step}: {type(e).__name__}: {e}"[:500]}) + "\n"
    try:
        os.write(2, msg.encode())
    finally:
        os._exit(SETUP_ERROR_EXIT)


def main() -> None:
    from stockade.sandbox import libc, seccomp, zygote

    step = "spec"
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        spec = Spec.from_json(_read_spec_line())
        step = "cgroup"
        for procs in spec.cgroup_procs:
            with open(procs, "w") as f:
                f.write("0")
        step = "netns"
        fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
        libc.setns(fd, libc.CLONE_NEWNET)
        os.close(fd)
        step = "seccomp"
        bpf = seccomp.build(spec.seccomp)
        step = "prepare"
        from stockade.sandbox import child, landlock
        etc_files, etc_links = zygote._etc()
        sys_links = {d: os.readlink(f"/{d}") for d in child.SYSTEM_DIRS if os.path.islink(f"/{d}")}
        abi = landlock.abi_version()
        if abi < 1:
            raise OSError(95, "Landlock unavailable")
        root = tempfile.mkdtemp(prefix=f"stockade-upstream-root-{os.getpid()}-", dir=spec.root_parent)
        step = "pid namespace"
        libc.unshare(libc.CLONE_NEWPID)
        pid = os.fork()
    except BaseException as e:  # noqa: BLE001
        _fail(step, e)
        return
    if pid == 0:
        _server(spec, root, bpf, abi, etc_files, etc_links, sys_links)
    for s in (0, 1):
        os.close(s)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        os.rmdir(root)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code & 0xFF)     # killed by signal N: 128 + N, as a shell says


# -- S: the server, pid 1 of its namespace ----------------------------------------------------
def _server(spec: Spec, root: str, bpf: list[bytes], abi: int, etc_files: dict[str, bytes],
            etc_links: dict[str, str], sys_links: dict[str, str]) -> None:
    from stockade.sandbox import child, landlock, libc

    step = "start"
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        step = "mounts"
        libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWCGROUP)
        child.build_template(root, None, None, etc_files, etc_links, sys_links)
        _add_mounts(root, spec)
        step = "pivot_root"
        os.chdir(root)
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
        libc.mount("proc", "/proc", "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
        step = "hostname"
        libc.sethostname("upstream")
        step = "identity"
        child._become_sandbox_user(spec.uid, spec.gid)
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)   # a uid change cleared it
        step = "caps"
        libc.drop_all_caps(libc.last_cap())
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        step = "fds"
        libc.close_range(3)
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.nofile, spec.nofile))
        step = "landlock"
        landlock.restrict(landlock.Spec(tuple(landlock_paths(spec.binds, sys_links)), spec.connect_ports), abi)
        step = "seccomp"
        os.chdir(spec.cwd if os.path.isdir(spec.cwd) else "/tmp")
        for prog in bpf:
            libc.load_seccomp_bpf(prog)
        step = "exec"
        os.execve(spec.argv[0], list(spec.argv), dict(spec.env))  # noqa: S606 - the configured server
    except BaseException as e:  # noqa: BLE001
        _fail(step, e)


def _add_mounts(root: str, spec: Spec) -> None:
    """Into the (read-only) template root: a tmpfs /tmp, each configured directory, and the
    instance's /etc/hosts (its allowlisted names: the sandbox has no resolver)."""
    from stockade.sandbox import child, libc

    libc.mount(None, root, None, libc.MS_REMOUNT | libc.MS_NOSUID | libc.MS_NODEV)
    libc.mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               f"mode=1777,size={max(1 << 20, spec.tmpfs)}")
    for b in spec.binds:
        why = check_bind(b.target)
        if why is not None:
            raise OSError(22, f"{b.target}: {why}")
        target = root + b.target
        os.makedirs(target, mode=0o755, exist_ok=True)
        child._bind(b.path, target, ro=b.ro)
    if spec.hosts_file:
        child._bind(spec.hosts_file, os.path.join(root, "etc", "hosts"), ro=True)
    libc.mount(None, root, None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)


if __name__ == "__main__":
    main()
    sys.exit(0)
