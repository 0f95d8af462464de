"""One sandboxed call: the child P, forked by the zygote as pid 1 of a new pid namespace.

    zygote: one raw clone(CLONE_NEWPID) -> P, a pidfd on P, the call's cgroup leaf made and P
            moved into it, then P's gate opened; watch P (pidfd)
    P:      read its arguments, setns(agent netns), wait on the gate (now in the call's
            cgroup), unshare(mount|uts|ipc|cgroup),
            minimal root from the template, pivot_root, /proc, hostname,
            drop to the agent's host uid, unshare(user) + uid map 1100,
            drop caps, no_new_privs, close fds, setsid, rlimits,
            Landlock, seccomp (last), handler -> JSON on fd 3 (the gateway's pipe)

Killing P (pid 1 of its namespace) kills every descendant; the zygote reports P's exit status
on a second pipe once P is reaped, i.e. once every process of the call is gone. P itself kills
and reaps everything else in its namespace before it writes its result and closes the pipe
(`drain`), so the gateway may answer a successful call on that EOF, before P's exit.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from stockade.core.encoding import write_all as _write_all
from stockade.sandbox import SANDBOX_GID, SANDBOX_UID, Profile, SandboxContext, landlock, libc, nftguard

SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEV_NODES = ("null", "zero", "full", "random", "urandom")
ETC_BINDS = ("ssl", "ca-certificates", "alternatives")


FORK_NS = 0   # set by the zygote just before fork (tracing only)


@dataclass
class Prepared:
    """What the zygote prepares once and every child inherits by fork."""

    root_dir: str                  # empty host dir the new root tmpfs is mounted on
    bpf: dict[str, list[bytes]]    # seccomp profile -> programs
    abi: int                       # Landlock ABI
    last_cap: int
    etc_files: dict[str, bytes]    # minimal /etc content
    etc_links: dict[str, str]
    system_links: dict[str, str]   # e.g. bin -> usr/bin (merged /usr)


# -- P: the sandboxed process -----------------------------------------------------------------
def sandboxed(req: dict[str, Any], args_fd: int, w: int, netns_fd: int, prep: Prepared,
              gate: int, impls: dict[str, Any], pooled: bool = False) -> None:
    """Body of P (just forked by the zygote). Never returns.

    `pooled`: P is armed ahead of its call (issue 16). `args_fd` is -1 and `w` is P's end of a
    control socket with the zygote: every layer is applied exactly as for a cold call, then P
    says "ready" on it and blocks for its one request (arguments memfd + result pipe), which
    replaces the socket as fd 3. A setup error goes back on the socket instead of a result pipe.
    """
    step = "start"
    trace: list[tuple[str, int]] = [("z_fork", FORK_NS), ("p_start", time.monotonic_ns())]
    tr = trace.append if req.get("trace") else (lambda _x: None)
    try:
        profile = Profile.from_dict(req["profile"])
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        gc.enable()
        if not pooled:
            step = "arguments"
            tr((step, time.monotonic_ns()))
            req = {**req, "args": _read_args(args_fd)}
        step = "netns"
        tr((step, time.monotonic_ns()))
        if netns_fd < 0:
            raise OSError(2, "no network namespace for this agent")
        libc.setns(netns_fd, libc.CLONE_NEWNET)
        os.close(netns_fd)
        nftguard.check_output_guard()   # a way out without its rules: fail closed, every call
        step = "cgroup"
        tr((step, time.monotonic_ns()))
        if os.read(gate, 1) != b"1":   # the zygote has moved us into the agent's cgroup
            raise OSError(5, "the zygote could not place the call in the agent's cgroup")
        os.close(gate)
        step = "mounts"
        tr(("unshare", time.monotonic_ns()))
        libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWCGROUP)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        tr((step, time.monotonic_ns()))
        _enter_root(req, prep, profile)
        step = "hostname"
        tr((step, time.monotonic_ns()))
        libc.sethostname("sandbox")
        step = "identity"
        tr((step, time.monotonic_ns()))
        _become_sandbox_user(int(req["host_uid"]), int(req["host_gid"]))
        step = "caps"
        tr((step, time.monotonic_ns()))
        libc.drop_all_caps(prep.last_cap)
        step = "no_new_privs"
        tr((step, time.monotonic_ns()))
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        step = "fds"
        tr((step, time.monotonic_ns()))
        if w != 3:
            os.dup2(w, 3, inheritable=False)
            os.close(w)
        else:
            os.set_inheritable(3, False)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 3:
            os.close(null)
        libc.close_range(4)
        step = "setsid"
        tr((step, time.monotonic_ns()))
        os.setsid()
        step = "rlimits"
        tr((step, time.monotonic_ns()))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        cpu = int(profile.timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        step = "landlock"
        tr((step, time.monotonic_ns()))
        if prep.abi < 1:
            raise OSError(95, "Landlock unavailable")
        landlock.restrict(landlock_spec(profile, prep.system_links), prep.abi)
        step = "seccomp"
        tr((step, time.monotonic_ns()))
        for prog in prep.bpf[profile.seccomp]:
            libc.load_seccomp_bpf(prog)
    except BaseException as e:  # noqa: BLE001
        try:
            _write_all(w if step in ("start", "arguments", "netns", "cgroup", "mounts", "hostname", "identity", "caps",
                                     "no_new_privs") else 3,
                       json.dumps({"setup_error": f"{step}: {type(e).__name__}: {e}"[:500]}).encode())
        finally:
            os._exit(70)
    if pooled:
        req = _await_request(req)
        if req.get("trace"):
            trace = [("z_fork", FORK_NS), ("pooled", time.monotonic_ns())]
    tr(("handler", time.monotonic_ns()))
    _run_handler(req, profile, impls, trace if req.get("trace") else None)


def _read_args(fd: int) -> Any:
    """The arguments memfd, read whole and closed (two syscalls, no file object: os.fdopen's
    io stack was a third of P's time from its request to its handler)."""
    try:
        size = os.fstat(fd).st_size
        chunks, at = [], 0
        while at < size:
            b = os.pread(fd, size - at, at)
            if not b:
                break
            chunks.append(b)
            at += len(b)
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks))


def _await_request(req: dict[str, Any]) -> dict[str, Any]:
    """A pre-armed P (every layer applied, fd 3 its control socket): say ready, block for the one
    request, make its result pipe fd 3 (the socket goes) and read the arguments. Afterwards P
    holds exactly what a cold P holds: fds 0-2 on /dev/null and 3, the call's result pipe. The
    zygote closing the socket without a request (pool flushed, idle, shutting down) ends P."""
    _rehearse(req)
    s = socket.socket(fileno=3)
    try:
        s.send(b"ready")
        msg, anc, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(8), socket.MSG_CMSG_CLOEXEC)
    except OSError:
        os._exit(0)
    finally:
        s.detach()
    fds = [int.from_bytes(d[i:i + 4], sys.byteorder) for lvl, typ, d in anc
           if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS for i in range(0, len(d) - 3, 4)]
    if not msg or len(fds) != 2:
        os._exit(0)
    args_fd, out_w = fds
    os.dup2(out_w, 3, inheritable=False)   # closes the control socket
    os.close(out_w)
    try:
        call = json.loads(msg)
        return {**req, "call_id": call["call_id"], "capability": call["capability"],
                "trace": bool(call.get("trace")), "args": _read_args(args_fd)}
    except BaseException as e:  # noqa: BLE001
        _write_all(3, json.dumps({"setup_error": f"request: {type(e).__name__}"}).encode())
        os._exit(70)


def _rehearse(req: dict[str, Any]) -> None:
    """A pre-armed P shares every page with the zygote until it writes to it, and each first
    write is a copy-on-write fault: ~180 of them between a filesystem.stat request and its
    result, half in the generic steps (the request, the arguments memfd, the context, the
    encoded result). Going through those steps once on made-up data before saying ready takes
    their faults while P waits, off the call's path. Nothing of it is kept."""
    fd = -1
    try:
        fd = os.memfd_create("rehearsal", os.MFD_CLOEXEC)
        _write_all(fd, b'{"path": ".", "argv": ["/bin/true"], "n": 1}')
        args = _read_args(fd)
        fd = -1
        call = json.loads(json.dumps({"call_id": "r" * 32, "capability": "rehearsal", "trace": False}))
        r = {**req, "call_id": call["call_id"], "capability": call["capability"], "args": args}
        ctx = SandboxContext(agent=r["agent"], call_id=r["call_id"], capability=r["capability"],
                             profile=Profile.from_dict(r["profile"]), deadline=time.monotonic(),
                             extra=r.get("extra") or {})
        json.dumps({"ok": {"path": ctx.workspace, "size": 1, "list": [1, 2.5, None, True]}}, default=str).encode()
    except Exception:  # noqa: BLE001 - a rehearsal: the real call reports its own errors
        if fd >= 0:
            os.close(fd)


def landlock_spec(profile: Profile, links: dict[str, str] | None = None) -> landlock.Spec:
    """Pure: what the sandbox may touch, by path in the new root (symlinked dirs need no rule)."""
    paths: list[tuple[str, int]] = [(f"/{d}", landlock.RX) for d in SYSTEM_DIRS if d not in (links or {})]
    paths += [("/", landlock.READ_DIR), ("/etc", landlock.RO), ("/shared", landlock.RO), ("/definitions", landlock.RO),
              ("/proc", landlock.RO),
              ("/dev", landlock.READ_FILE | landlock.WRITE_FILE | landlock.READ_DIR),
              ("/workspace", landlock.RW), ("/tmp", landlock.RW), ("/trash", landlock.RW), ("/pack", landlock.RO)]
    return landlock.Spec(tuple(paths), tuple(profile.egress_ports()))


def _run_handler(req: dict[str, Any], profile: Profile, impls: dict[str, Any],
                 trace: list[tuple[str, int]] | None = None) -> None:
    from stockade.core.errors import StockadeError

    code = 0
    try:
        os.chdir("/workspace") if os.path.isdir("/workspace") else None
        ctx = SandboxContext(agent=req["agent"], call_id=req["call_id"], capability=req["capability"],
                             profile=profile, deadline=time.monotonic() + profile.timeout - 0.05 *
                             profile.timeout, extra=req.get("extra") or {})
        if req.get("handler") == "pack":   # a signed pack: the runner verifies /pack, then runs it
            from stockade.packs.runner import run as fn
        else:
            fn = impls[req["capability"]]
        result = fn(ctx, req["args"])
        body: dict[str, Any] = {"ok": result}
        if trace is not None:
            trace.append(("done", time.monotonic_ns()))
            body["trace"] = trace
        out = json.dumps(body, default=str).encode()
    except StockadeError as e:
        out = json.dumps({"error": {"type": e.type, "message": e.message, "recovery": e.recovery,
                                    "data": e.data}}, default=str).encode()
    except BaseException as e:  # noqa: BLE001
        out = json.dumps({"error": {"type": "Internal", "message":
                                    f"{req['capability']} failed in the sandbox ({type(e).__name__})",
                                    "exception": type(e).__name__, "errno": getattr(e, "errno", None)}}).encode()
        code = 1
    drain()
    try:
        _write_all(3, out)
        os.close(3)
    except OSError:
        code = 2
    os._exit(code)


def drain() -> None:
    """P, pid 1 of the call's pid namespace, kills everything else in it and reaps it before its
    result: the result pipe's EOF then means nothing the call started still runs, and the gateway
    may answer on it without waiting for P's own exit and the zygote's report (issue 16). As
    pid 1, P inherits every orphan, so ECHILD means the namespace holds only P. Outside a pid
    namespace of its own (never in a real call) it does nothing."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(OSError):       # ESRCH: nothing else runs
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _bind(src: str, dst: str, ro: bool, dev: bool = False) -> None:
    fd = os.open(src, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        libc.mount(f"/proc/self/fd/{fd}", dst, None, libc.MS_BIND)
    finally:
        os.close(fd)
    flags = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_NOSUID | (0 if dev else libc.MS_NODEV)
    if ro:
        flags |= libc.MS_RDONLY
    if dev:
        flags |= libc.MS_NOEXEC
    libc.mount(None, dst, None, flags)


def build_template(root: str, shared: str | None, definitions: str | None, etc_files: dict[str, bytes],
                   etc_links: dict[str, str], system_links: dict[str, str]) -> None:
    """Zygote start-up, in the zygote's own mount namespace: the static part of every root.

    Per call the child copies this tree (unshare(CLONE_NEWNS)) and adds only /workspace,
    /trash, /tmp and /proc, then pivots into it; the template itself is read-only.
    """
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount("tmpfs", root, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755,size=4m")
    j = os.path.join
    for d in SYSTEM_DIRS:
        if d in system_links:
            os.symlink(system_links[d], j(root, d))
        elif os.path.isdir(f"/{d}"):
            os.mkdir(j(root, d))
            _bind(f"/{d}", j(root, d), ro=True)
    for name in ("workspace", "trash", "shared", "definitions", "tmp", "proc", "pack"):
        os.mkdir(j(root, name), 0o755)
    if shared:
        _bind(shared, j(root, "shared"), ro=True)
    if definitions:   # copied, not bound: a bind would name the install path in mountinfo
        _copy_tree(definitions, j(root, "definitions"))
    # /etc: a small tmpfs with what libc and tools need, read-only
    etc = j(root, "etc")
    os.mkdir(etc, 0o755)
    libc.mount("tmpfs", etc, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755,size=2m")
    for name, data in etc_files.items():
        fd = os.open(j(etc, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _write_all(fd, data)
        os.close(fd)
    for name, target in etc_links.items():
        os.symlink(target, j(etc, name))
    for name in ETC_BINDS:
        if os.path.isdir(f"/etc/{name}"):
            os.mkdir(j(etc, name))
            _bind(f"/etc/{name}", j(etc, name), ro=True)
    libc.mount(None, etc, None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)
    # /dev: null zero full random urandom, plus the /proc/self/fd links
    dev = j(root, "dev")
    os.mkdir(dev, 0o755)
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=0755,size=64k")
    for n in DEV_NODES:
        open(j(dev, n), "w").close()
        _bind(f"/dev/{n}", j(dev, n), ro=False, dev=True)
    for n, t in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                 ("stderr", "/proc/self/fd/2")):
        os.symlink(t, j(dev, n))
    libc.mount(None, dev, None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NOEXEC)
    libc.mount(None, root, None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)


def _copy_tree(src: str, dst: str) -> None:
    """Copy the regular files and directories of `src` into the (template tmpfs) dir `dst`."""
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(target, 0o755)
            _copy_tree(entry.path, target)
        elif entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as f:
                data = f.read()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)


def _enter_root(req: dict[str, Any], prep: Prepared, profile: Profile) -> None:
    """P: the per-call part of the root (workspace, trash, tmp, proc), then pivot_root."""
    root = prep.root_dir
    j = os.path.join
    for name in ("workspace", "trash"):
        src = req["binds"].get(name)
        if not src:
            raise OSError(2, f"no {name} for this agent")
        _bind(src, j(root, name), ro=False)
    if req["binds"].get("pack"):   # the pack's read-only store directory, for pack calls only
        _bind(req["binds"]["pack"], j(root, "pack"), ro=True)
    libc.mount("tmpfs", j(root, "tmp"), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               f"mode=1777,size={max(1024 * 1024, profile.tmpfs)}")
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    libc.mount("proc", "/proc", "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)


def _become_sandbox_user(uid: int, gid: int) -> None:
    """Drop to the agent's unprivileged host uid, then map it to 1100 in a new user ns."""
    if uid <= 0 or gid <= 0:
        raise OSError(1, "refusing to map the sandbox to host root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(libc.PR_SET_DUMPABLE, 1)  # /proc/self/*_map must be ours to write
    libc.unshare(libc.CLONE_NEWUSER)
    for name, data in (("uid_map", f"{SANDBOX_UID} {uid} 1"), ("setgroups", "deny"),
                       ("gid_map", f"{SANDBOX_GID} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
