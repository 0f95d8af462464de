"""The zygote: a fresh, small, single-threaded interpreter that forks one child per call.

Started by the gateway in `prefork` (before any thread and before the vault is unsealed) as a
new interpreter (`python -m stockade.sandbox.zygote FD`), so its memory never held the gateway's
configuration, database handles or keys. It imports every capability implementation, builds the
seccomp programs, the read-only root template and probes the kernel once, then serves requests
on a SOCK_SEQPACKET socket (fd FD). Each call message is `call {json}` (the call's own fields:
call id, capability, trace; see `per_call_fields`) and carries four or five fds:

* a memfd with the JSON envelope (agent, capability, profile, binds, ...), read here;
* a memfd with the arguments, read only by the child: they may hold resolved secrets, and the
  zygote's heap is inherited by every later child;
* the write end of the result pipe (the child writes its JSON there);
* the write end of the status pipe (the zygote reports the child's exit there);
* the agent's network namespace.

The reply is `{"pid": child pid}` or `{"error": ...}`. The zygote watches every running child
(pidfd), kills it at its deadline, reaps it and writes `{"status", "code"|"signal", "timeout",
"oom_kill", "pids_max"}` to the status pipe. The gateway answers a call whose result is a
complete `{"ok": ...}` as soon as the result pipe closes (P has drained its pid namespace before
that, see child.drain); the report then only feeds health. Errors wait for the report.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import select
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

# Modules handlers may need: imported now, because after pivot_root nothing of the host's
# site-packages is visible to the child.
PRELOAD = ("json", "ctypes", "errno", "shutil", "subprocess", "fnmatch", "glob", "re", "stat",
           "pathlib", "hashlib", "base64", "tempfile", "datetime", "io", "select", "fcntl", "struct",
           "time", "signal", "socket", "codecs", "encodings.ascii", "encodings.latin_1",
           "encodings.idna", "unicodedata", "difflib", "itertools", "functools", "collections",
           "string", "textwrap", "mimetypes", "uuid", "zlib", "binascii", "locale", "pwd", "grp",
           "resource", "errno", "stockade.core.errors")

def _etc(home_uid: int = 1100) -> tuple[dict[str, bytes], dict[str, str]]:
    files = {
        "passwd": b"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:1100:1100:sandbox:/workspace:/bin/sh\n"
                  b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": b"root:x:0:\nsandbox:x:1100:\nnogroup:x:65534:\n",
        "hosts": b"127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n",
        "hostname": b"sandbox\n",
        "nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
        "resolv.conf": b"",
    }
    for name in ("ld.so.cache", "ld.so.conf", "mime.types", "protocols", "services"):
        with contextlib.suppress(OSError), open(f"/etc/{name}", "rb") as f:
            files[name] = f.read()
    links = {}
    with contextlib.suppress(OSError):
        links["localtime"] = os.readlink("/etc/localtime")
    return files, links


def probe_userns() -> bool:
    """Can a child drop to an unprivileged uid and create a user namespace?"""
    from stockade.sandbox import libc

    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, st = os.waitpid(pid, 0)
    return os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0


IMPL_PACKAGE = "stockade.capabilities.impl"


def _import_implementations(problems: list[str], only: list[str] | None = None) -> dict[str, Any]:
    """Import the implementation modules with a featherweight `registry` in place.

    Implementations only need `@implements`; the real registry module pulls in pydantic,
    jsonschema and YAML (about 20 MB), which would make every per-call fork and exit slower.
    The gateway validates definitions against implementations with the real registry, and
    names in `only` the modules that hold an `execution: sandbox` capability: in-process-only
    modules (state: sqlite3 + asyncio; approvals; system) are never imported here, so every
    clone copies a smaller heap. `only=None` imports every module (an older gateway).
    """
    import pkgutil
    import types

    impls: dict[str, Any] = {}
    stub = types.ModuleType("stockade.capabilities.registry")

    def implements(name: str) -> Any:
        def deco(fn: Any) -> Any:
            impls[name] = fn
            fn.capability = name
            return fn
        return deco

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("not available inside the sandbox zygote")

    stub.implements = implements  # type: ignore[attr-defined]
    stub.parse_definitions = unavailable  # type: ignore[attr-defined]
    stub.load_registry = unavailable  # type: ignore[attr-defined]
    stub._IMPLS = impls  # type: ignore[attr-defined]
    sys.modules["stockade.capabilities.registry"] = stub
    from stockade.capabilities import impl

    names = [m.name for m in pkgutil.iter_modules(impl.__path__)]
    if only is not None:
        names = [n for n in names if f"{IMPL_PACKAGE}.{n}" in only]
    for name in names:
        try:
            importlib.import_module(f"{impl.__name__}.{name}")
        except Exception as e:  # the gateway reports the same problem with the real registry
            problems.append(f"implementation {name}: {type(e).__name__}: {e}"[:300])
    return impls


def prepare(init: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Imports, probes and builds everything once. Returns (Prepared, impls, status)."""
    from stockade.sandbox import cgroups, child, landlock, libc, seccomp

    status: dict[str, Any] = {"pid": os.getpid()}
    problems: list[str] = []
    impls = _import_implementations(problems, init.get("modules"))
    for m in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(m)
    try:   # pack calls verify Ed25519 signatures in the child: import once here, not per call
        importlib.import_module("stockade.packs.runner")
    except ImportError as e:
        problems.append(f"packs runner: {e}"[:200])

    abi = landlock.abi_version()
    status["landlock_abi"] = abi
    if abi < 1:
        problems.append("landlock: not available")
    bpf: dict[str, list[bytes]] = {}
    try:
        for prof in ("default", "strict"):
            bpf[prof] = seccomp.build(prof)
        status["seccomp"] = {"ok": True, "instructions": {k: len(v[0]) // 8 for k, v in bpf.items()},
                             "allowlist": len(seccomp.ALLOW)}
    except Exception as e:
        status["seccomp"] = {"ok": False, "error": str(e)[:200]}
        problems.append(f"seccomp: {e}"[:200])
    status["userns"] = probe_userns()
    if not status["userns"]:
        problems.append("user namespaces: unavailable")
    info = cgroups.detect(init.get("cgroup_version"))
    status["cgroup"] = info.summary()
    missing = cgroups.missing_controllers(info)
    if missing:
        problems.append(f"cgroup v{info.version or '?'}: missing controllers {', '.join(missing)}")
    status["problems"] = problems
    root_parent = init.get("root_parent") or "/run"
    _remove_stale_roots(root_parent)
    root_dir = tempfile.mkdtemp(prefix=f"stockade-sandbox-root-{os.getpid()}-", dir=root_parent)
    etc_files, etc_links = _etc()
    sys_links = {d: os.readlink(f"/{d}") for d in child.SYSTEM_DIRS if os.path.islink(f"/{d}")}
    try:
        child.build_template(root_dir, init.get("shared"), init.get("definitions"), etc_files, etc_links,
                             sys_links)
    except OSError as e:
        problems.append(f"mounts: cannot build the sandbox root template ({e})")
    prep = child.Prepared(root_dir, bpf, abi, libc.last_cap(), etc_files, etc_links, sys_links)
    status["root_dir"] = root_dir
    status["cgroup_info"] = info
    status["implementations"] = sorted(impls)
    status["rss_kb"] = _rss_kb()
    return prep, impls, status


def _rss_kb() -> int:
    """This process's resident set (kB): what every per-call clone starts from."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def _remove_stale_roots(parent: str) -> None:
    """Empty mount-point dirs of zygotes that died without cleaning up (named after their pid).

    Never one of a live zygote: removing a directory that is a mount point in another mount
    namespace would detach that zygote's root template.
    """
    import re

    for name in os.listdir(parent):
        m = re.fullmatch(r"stockade-sandbox-root-(\d+)-\w+", name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue          # that pid is alive (a zygote or a reused pid): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(parent, name))


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds: list[int] = []
    msg, anc, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(8 * 4))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            n = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, n, 4))
    return msg, fds


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


TITLE = b"stockade-sandbox"


def _py_fork(flags: int, own_pidns: int) -> int:
    from stockade.sandbox import libc

    if flags:
        libc.unshare(flags)
    try:
        return os.fork()
    finally:
        if flags and os.getpid() != 1:
            libc.setns(own_pidns, libc.CLONE_NEWPID)  # our next child is ours again


@dataclass
class _Call:
    pid: int
    pidfd: int
    status_w: int
    deadline: float
    leaf: Any                 # the call's own cgroup (None with the cgroup layer off in tests)
    timeout: bool = False
    slot: str | None = None   # the pool slot whose demand this call counts in
    started: float = 0.0
    ns_hold: int = -1         # the call's mount namespace, released after its report


@dataclass
class _Armed:
    """A pooled child: armed (or arming) for one slot, blocked on its control socket."""

    pid: int
    pidfd: int
    ctl: socket.socket        # the zygote's end; the child's is its fd 3 until its request
    leaf: Any
    key: str
    ready: bool = False
    memory: int = 0           # charged to its leaf once ready (the pool's memory budget)
    started: float = 0.0
    ns_hold: int = -1         # its mount namespace (see _Call.ns_hold)


@dataclass
class _Slot:
    """One (agent, effective profile, namespace, ...) the pool arms children for."""

    req: dict[str, Any]       # the envelope without its per-call fields
    profile: Any
    agent_profile: Any
    netns_fd: int             # a dup of the namespace the slot's requests name (same inode)
    demand: Any
    children: list[_Armed]


def _finish(c: _Call) -> bool:
    """P exited (pidfd readable): reap it, attribute the death, report on the status pipe.

    The counters are the call's own leaf's (fresh for this call): a kill in a concurrent call
    of the same agent is never reported here. The leaf is removed; False if that failed.
    """
    _, status = os.waitpid(c.pid, 0)
    h: dict[str, Any] = {"status": "done", "timeout": c.timeout}
    if os.WIFSIGNALED(status):
        h["signal"] = os.WTERMSIG(status)
    else:
        h["code"] = os.WEXITSTATUS(status)
    if c.leaf is not None:
        h.update(c.leaf.counters())
    with contextlib.suppress(OSError):
        os.write(c.status_w, json.dumps(h).encode())
    os.close(c.status_w)
    os.close(c.pidfd)
    # The caller has its answer. Only now the call's mount namespace is torn down (unmounting
    # its ~20 mounts waits for RCU grace periods; P's exit only dropped a reference), and its
    # empty leaf is removed (rmdir in each hierarchy): neither is on the caller's path.
    if c.ns_hold >= 0:
        os.close(c.ns_hold)
    return c.leaf.remove() if c.leaf is not None else True


class _BadRequest(Exception):
    """A request the zygote cannot parse: refused, nothing forked."""


@dataclass
class _Request:
    """One parsed call request and the fds that came with it (owned until handed on)."""

    req: dict[str, Any]
    profile: Any              # the call's (its leaf's limits)
    agent_profile: Any        # the agent's (its group's aggregate limits)
    args_fd: int
    out_w: int
    status_w: int
    netns_fd: int
    raw: bytes = b""          # the envelope as sent: what the parse and slot-key caches are keyed on

    def close(self) -> None:
        for x in (self.args_fd, self.out_w, self.status_w, self.netns_fd):
            if x >= 0:
                os.close(x)


# Parsed envelopes by their bytes. The gateway sends a call's own fields (call id, capability)
# with the message, so one agent's calls under one profile send the same envelope: parsing it
# and building its two Profiles is done once, not per call. Envelopes hold no arguments or
# secrets (those go to the child only); bounded, cleared when full.
_PARSED: dict[bytes, tuple[dict[str, Any], Any, Any]] = {}
PARSED_MAX = 64


def _parse_request(fds: list[int]) -> _Request:
    """Stage 1: the envelope memfd -> a request (a fresh dict each time). Closes every fd on failure."""
    from stockade.sandbox import Profile

    if len(fds) not in (4, 5):
        for x in fds:
            os.close(x)
        raise _BadRequest
    req_fd, args_fd, out_w, status_w = fds[:4]
    try:
        raw = _read_fd(req_fd)
        hit = _PARSED.get(raw)
        if hit is None:
            req = json.loads(raw)
            prof = Profile.from_dict(req["profile"])
            agent_prof = Profile.from_dict(req["agent_profile"]) if req.get("agent_profile") else prof
            if len(_PARSED) >= PARSED_MAX:
                _PARSED.clear()
            hit = _PARSED[raw] = (req, prof, agent_prof)
    except Exception:
        for x in fds:
            os.close(x)
        raise _BadRequest from None
    os.close(req_fd)
    return _Request(dict(hit[0]), hit[1], hit[2], args_fd, out_w, status_w, fds[4] if len(fds) == 5 else -1, raw)


def per_call_fields(msg: bytes) -> dict[str, Any]:
    """Pure: the call's own fields sent with the message (`call {json}`); only the per-call keys
    are taken (never anything that shapes the sandbox). Plain `call`: none (all in the envelope)."""
    from stockade.sandbox import pool

    if not msg.startswith(b"call "):
        return {}
    got = json.loads(msg[5:])
    if not isinstance(got, dict):
        raise ValueError("per-call fields must be an object")
    return {k: v for k, v in got.items() if k in pool.PER_CALL and k != "args"}


class Zygote:
    """The serving state: the socket, what `prepare` built, the agents' cgroups, running calls."""

    def __init__(self, sock: socket.socket, prep: Any, impls: dict[str, Any], info: Any, parent: str,
                 home_tag: str = "", raw_clone: bool = True):
        self.sock = sock
        # One raw clone(CLONE_NEWPID) per call instead of unshare + os.fork + setns: no at-fork
        # hooks. False (os.fork) only where test code constructs the zygote that way.
        self.raw_clone = raw_clone
        self.prep = prep
        self.impls = impls
        self.info = info
        self.parent = parent
        self.home_tag = home_tag       # cgroups are per home: two homes never share an agent's group
        self.groups: dict[str, tuple[str, Any]] = {}
        self.calls: dict[int, _Call] = {}
        self.stale: list[Any] = []     # leaves whose removal failed, retried on the next request
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        from stockade.sandbox import pool
        self.slots: dict[str, _Slot] = {}
        self.keys: dict[tuple[bytes, tuple[int, ...]], str | None] = {}   # see _slot_key
        self._msg = b""
        self._last: tuple[bytes, bytes, tuple[int, ...]] | None = None     # see _rehearse
        self.armed: dict[int, _Armed] = {}    # control socket fd -> pooled child
        self.pstats = pool.Stats()
        self._ns_hold = -1                    # handed from _take to the call's record
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)

    # -- the loop ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        try:
            while True:
                wait = self._kill_overdue()
                if self._refill():
                    wait = 0          # more to arm: come back at once, after any waiting request
                for fd, _ev in self.poller.poll(wait):
                    if fd in self.calls:
                        self.poller.unregister(fd)
                        c = self.calls.pop(fd)
                        if c.slot in self.slots:
                            self.slots[c.slot].demand.end()
                        if not _finish(c):
                            self.stale.append(c.leaf)
                    elif fd in self.armed:
                        self._on_ctl(self.armed[fd])
                    elif not self._accept():
                        return
        finally:
            self.shutdown()

    def _kill_overdue(self) -> int:
        """SIGKILL calls past their deadline; return the poll timeout (ms) to the next one."""
        now = time.monotonic()
        for c in self.calls.values():
            if not c.timeout and now >= c.deadline:
                c.timeout = True
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
        wait = min((c.deadline - now for c in self.calls.values() if not c.timeout), default=5.0)
        return max(0, int(wait * 1000) + 1)

    def _accept(self) -> bool:
        """One request: parse, place in the agent's cgroup, fork, reply. False when the gateway left."""
        msg, fds = _recv(self.sock)
        if not msg:
            return False
        self._msg = msg
        if msg == b"stats":
            for x in fds:
                os.close(x)
            ready = [a.pid for a in self.armed.values() if a.ready]
            self.sock.send(json.dumps({"pool": self._pool_view(), "ready_pids": ready}).encode())
            return True
        if msg.startswith(b"flush"):
            for x in fds:
                os.close(x)
            n = self._flush(msg[6:].decode(errors="replace") or None)
            self.sock.send(json.dumps({"flushed": n, "pool": self._pool_view()}).encode())
            return True
        try:
            r = _parse_request(fds)
        except _BadRequest:
            self.sock.send(b'{"error": "bad request"}')
            return True
        try:
            r.req.update(per_call_fields(msg))
        except ValueError:
            r.close()
            self.sock.send(b'{"error": "bad request"}')
            return True
        self.stale = [leaf for leaf in self.stale if not leaf.remove()]
        key = self._slot_for(r)
        got = self._take(key, r) if key is not None else None
        if got is not None:
            pid, pidfd, leaf, repaired = got
        else:
            try:
                cg = self._cgroup(r)
                pid, pidfd, leaf, repaired = self._fork(r, cg)
            except OSError as e:
                if key in self.slots:
                    self.slots[key].demand.end()
                r.close()
                self.sock.send(json.dumps({"error": f"{e}"[:300]}).encode())
                return True
        os.close(r.out_w)
        os.close(r.args_fd)
        if r.netns_fd >= 0:
            os.close(r.netns_fd)
        now = time.monotonic()
        hold, self._ns_hold = (self._ns_hold, -1) if got is not None else (-1, -1)
        self.calls[pidfd] = _Call(pid, pidfd, r.status_w, now + r.profile.timeout, leaf, slot=key, started=now,
                                  ns_hold=hold)
        self.poller.register(pidfd, select.POLLIN)
        reply: dict[str, Any] = {"pid": pid, "pooled": got is not None, "pool": self._pool_view()}
        if repaired:
            reply["repaired"] = repaired
        self.sock.send(json.dumps(reply).encode())
        return True

    # -- the pool of pre-armed children (issue 16) -------------------------------------------------
    def _slot_for(self, r: _Request) -> str | None:
        """The request's slot key (None: cold only), creating the slot on first sight; counts the
        request in the slot's demand."""
        from stockade.sandbox import pool

        ids = pool.identity(r.netns_fd, r.req.get("binds") or {}) if r.req.get("pool") else None
        key = self._slot_key(r, ids) if ids is not None else None
        if key is not None and ids is not None:
            self._last = (r.raw, self._msg, tuple(ids))
        if key is None:
            return None
        slot = self.slots.get(key)
        if slot is None:
            # an agent's pooled calls have one effective profile at a time: a new slot means its
            # profile (or namespace, workspace, generation) changed, and the old slot's children
            # are killed unused now rather than left to idle out
            for old in [k for k, s in self.slots.items() if s.req.get("agent") == r.req.get("agent")]:
                self._drop_slot(old)
            fixed = {k: v for k, v in r.req.items() if k not in pool.PER_CALL}
            slot = _Slot(fixed, r.profile, r.agent_profile, os.dup(r.netns_fd), pool.Demand(), [])
            self.slots[key] = slot
        slot.demand.begin(time.monotonic())
        return key

    def _slot_key(self, r: _Request, ids: list[int]) -> str | None:
        """pool.slot_key, remembered by (envelope bytes, ids): the envelope alone fixes every
        field of the key (the per-call ones are not part of it)."""
        from stockade.sandbox import pool

        ck = (r.raw, tuple(ids))
        if ck not in self.keys:
            if len(self.keys) >= PARSED_MAX:
                self.keys.clear()
            self.keys[ck] = pool.slot_key(r.req, ids)
        return self.keys[ck]

    def _take(self, key: str, r: _Request) -> tuple[int, int, Any, None] | None:
        """Hand the request to a ready child of its slot: its egress guard is checked now (the
        child checked it when armed; rules may have gone since), then the arguments memfd and the
        result pipe go to the child, which has never run anything else. None: none ready (or
        the hand-over failed): the caller runs the call cold, which reports any failure."""
        slot = self.slots[key]
        ready = [a for a in slot.children if a.ready]
        if not ready:
            self.pstats.misses += 1
            return None
        a = ready[0]
        self._forget(a)
        try:
            self._guard(r.netns_fd)
            call = {"call_id": r.req.get("call_id"), "capability": r.req.get("capability"),
                    "trace": bool(r.req.get("trace"))}
            a.ctl.sendmsg([json.dumps(call).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                          _fd_bytes([r.args_fd, r.out_w]))])
        except OSError:
            self._discard(a)
            self.pstats.misses += 1
            return None
        a.ctl.close()
        self.pstats.hits += 1
        self._ns_hold = a.ns_hold
        return a.pid, a.pidfd, a.leaf, None

    def _guard(self, netns_fd: int) -> None:
        """The per-call egress check (nftguard) for a pooled call, run by the zygote inside the
        call's namespace: a pooled child is past seccomp and cannot ask the kernel itself."""
        from stockade.sandbox import libc, nftguard

        if netns_fd < 0:
            raise OSError(2, "no network namespace")
        libc.setns(netns_fd, libc.CLONE_NEWNET)
        try:
            nftguard.check_output_guard()
        finally:
            try:
                libc.setns(self.own_netns, libc.CLONE_NEWNET)
            except OSError:
                os._exit(75)     # never serve from an agent's namespace: the gateway restarts us

    def _refill(self) -> bool:
        """Arm at most one child per loop turn (requests are served in between); True if more
        are wanted. Idle slots are emptied first. Bounded by count and by the memory ready
        children are charged."""
        from stockade.sandbox import pool

        now = time.monotonic()
        for key in [k for k, s in self.slots.items() if s.demand.inflight == 0 and
                    now - s.demand.last_use > pool.IDLE_S]:
            self._drop_slot(key)
        for a in [a for a in self.armed.values() if not a.ready and now - a.started > pool.ARM_TIMEOUT_S]:
            self._failed(self.slots[a.key], "not ready in time")    # a wedged arming never blocks its slot
            self._discard(a, unused=False)
        if len(self.armed) >= pool.TOTAL_MAX or self._memory() >= pool.BUDGET_BYTES:
            return False
        if any(now - c.started < pool.QUIET_S for c in self.calls.values()):
            return False      # a call just started: its exit report comes before a clone (~ms)
        for key, slot in self.slots.items():
            if len(slot.children) < pool.target(slot.demand, now):
                self._arm(key, slot)
                self._rehearse()
                return True
        return False

    def _rehearse(self) -> None:
        """After a clone every page of the zygote is shared with the new child, and the zygote's
        next write to each one costs a copy-on-write fault: ~80 of them in the next pooled hit,
        on the call's path (a third to half of the zygote's time per hit under load). Going
        through the hit path's own Python steps once now, off the path (arming waits for a quiet
        moment), takes most of those faults early (measured 80 -> 30 per hit). Nothing is sent
        and nothing changes: the last pooled request's envelope and message are parsed, keyed
        and encoded again, its slot's records rewritten with their own values."""
        if self._last is None:
            return
        raw, msg, ids = self._last
        with contextlib.suppress(Exception):
            hit = _PARSED.get(raw)
            if hit is None:
                return
            req = dict(hit[0])
            req.update(per_call_fields(msg))
            self.keys.get((raw, ids))
            from stockade.sandbox import pool

            slot = self.slots.get(self.keys.get((raw, ids)) or "")
            if slot is not None:
                pool.identity(slot.netns_fd, req.get("binds") or {})
                d = slot.demand
                d.last_use, d.inflight, d.peak = d.last_use, d.inflight, d.peak
            r = _Request(req, hit[1], hit[2], -1, -1, -1, -1, raw)
            call = {"call_id": r.req.get("call_id"), "capability": r.req.get("capability"),
                    "trace": bool(r.req.get("trace"))}
            json.dumps(call).encode()
            _fd_bytes([0, 1])
            json.dumps({"pid": 0, "pooled": True, "pool": self._pool_view()}).encode()
            try:
                self.calls[-1] = _Call(0, -1, -1, time.monotonic() + r.profile.timeout, None, started=0.0)
            finally:
                self.calls.pop(-1, None)
            self.pstats.hits = self.pstats.hits

    def _arm(self, key: str, slot: _Slot) -> None:
        """Clone a child for `slot` that applies every layer, then waits on a control socket."""
        r = _Request(slot.req, slot.profile, slot.agent_profile, -1, -1, -1, slot.netns_fd)
        zs, cs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            r.out_w = cs.fileno()
            cg = self._cgroup(r)
            pid, pidfd, leaf, _ = self._fork(r, cg, peer=zs.fileno())
        except OSError as e:
            zs.close()
            self._failed(slot, f"{e}")
            return
        finally:
            cs.close()
        a = _Armed(pid, pidfd, zs, leaf, key, started=time.monotonic())
        self.armed[zs.fileno()] = a
        slot.children.append(a)
        self.poller.register(zs, select.POLLIN)

    def _on_ctl(self, a: _Armed) -> None:
        """A pooled child spoke: "ready" (every layer applied), or a setup error / EOF (it died)."""
        try:
            msg = a.ctl.recv(4096)
        except OSError:
            msg = b""
        if msg == b"ready" and not a.ready:
            a.ready = True
            with contextlib.suppress(OSError):
                a.ns_hold = os.open(f"/proc/{a.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            a.memory = a.leaf.memory_bytes() if a.leaf is not None else 0
            self.pstats.armed += 1
            return
        if not a.ready and a.key in self.slots:
            self._failed(self.slots[a.key], msg.decode(errors="replace") or "exited while arming")
        self._discard(a, unused=False)

    def _failed(self, slot: _Slot, why: str) -> None:
        self.pstats.failures += 1
        self.pstats.last_error = why[:300]
        slot.demand.failed_at = time.monotonic()

    def _forget(self, a: _Armed) -> None:
        """Take `a` out of the pool's books (it is being used or killed)."""
        self.armed.pop(a.ctl.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(a.ctl)
        slot = self.slots.get(a.key)
        if slot is not None and a in slot.children:
            slot.children.remove(a)

    def _discard(self, a: _Armed, unused: bool = True) -> None:
        """Kill a pooled child that will never serve a call, reap it, remove its leaf."""
        self._forget(a)
        a.ctl.close()
        _kill_and_reap(a.pid, a.pidfd)
        if a.ns_hold >= 0:
            os.close(a.ns_hold)
        if a.leaf is not None and not a.leaf.remove():
            self.stale.append(a.leaf)
        if unused:
            self.pstats.discarded += 1

    def _drop_slot(self, key: str) -> int:
        slot = self.slots.pop(key)
        n = len(slot.children)
        for a in list(slot.children):
            self._discard(a)
        os.close(slot.netns_fd)
        return n

    def _flush(self, agent: str | None) -> int:
        """Invalidation (policy, profile or egress changed; agent revoked): every child armed
        for `agent` (all agents: None) is killed unused and its slot forgotten."""
        keys = [k for k, s in self.slots.items() if agent is None or s.req.get("agent") == agent]
        return sum(self._drop_slot(k) for k in keys)

    def _memory(self) -> int:
        return sum(a.memory for a in self.armed.values() if a.ready)

    def _pool_view(self) -> dict[str, Any]:
        ready = sum(1 for a in self.armed.values() if a.ready)
        return self.pstats.view(ready, len(self.armed) - ready, len(self.slots), self._memory())

    # -- stages --------------------------------------------------------------------------------
    def _cgroup(self, r: _Request) -> Any:
        """Stage 2: the agent's group with the agent's aggregate limits (written when they change)."""
        from stockade.sandbox.cgroups import AgentCgroup

        prof, agent = r.agent_profile, r.req["agent"]
        key = json.dumps([prof.cpu, prof.memory, prof.pids, prof.io_read, prof.io_write, r.req.get("io_devices")])
        cached = self.groups.get(agent)
        if cached is None or cached[0] != key:
            g = AgentCgroup(self.info, self.parent, agent, self.home_tag)
            g.ensure(prof, r.req.get("io_devices") or [])
            self.groups[agent] = (key, g)
        return self.groups[agent][1]

    def _fork(self, r: _Request, cg: Any, peer: int = -1) -> tuple[int, int, Any, str | None]:
        """Stage 3: clone P into a new pid namespace, move it into its own leaf below `cg`, open
        its gate.

        The zygote makes the call's leaf and moves the child into it while the child reads its
        arguments and joins the netns (two cores: in parallel); the child waits on the gate
        before anything that must run inside the cgroup. If anything fails here, P is killed and
        reaped, its leaf removed and its pidfd closed before the error goes back: nothing of the
        call is left.
        """
        from stockade.sandbox import child, libc

        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        child.FORK_NS = time.monotonic_ns()
        try:
            pid = libc.clone_fork(libc.CLONE_NEWPID) if self.raw_clone else _py_fork(libc.CLONE_NEWPID,
                                                                                 self.own_pidns)
        except OSError:
            os.close(gate_r)
            os.close(gate_w)
            raise
        if pid == 0:
            self._in_child(r, gate_r, gate_w, peer)
        os.close(gate_r)
        pidfd = -1
        leaf = cg.call(f"c{pid}") if cg is not None else None
        repaired = None
        try:
            pidfd = os.pidfd_open(pid)
            if leaf is not None:
                repaired = self._place(cg, leaf, r, pid)
            with contextlib.suppress(BrokenPipeError):   # P already failed: its error is on the result pipe
                os.write(gate_w, b"1")
        except OSError:
            _kill_and_reap(pid, pidfd)
            if leaf is not None and not leaf.remove():
                self.stale.append(leaf)
            raise
        finally:
            os.close(gate_w)
        return pid, pidfd, leaf, repaired

    def _place(self, cg: Any, leaf: Any, r: _Request, pid: int) -> str | None:
        """Make the call's leaf with the call's limits and move P into it. An agent group removed
        behind our back is re-created (with the agent's limits) and the repair reported to the
        gateway, which shows it in health."""
        devices = r.req.get("io_devices") or []
        try:
            leaf.create(r.profile, devices)
            leaf.attach(pid)
            return None
        except FileNotFoundError:
            leaf.remove()
            cg.ensure(r.agent_profile, devices)
            leaf.create(r.profile, devices)
            leaf.attach(pid)
            return "cgroup"

    def _in_child(self, r: _Request, gate_r: int, gate_w: int, peer: int = -1) -> None:
        """Body of the freshly cloned P: hand over to `child.sandboxed`. Never returns.

        `peer` >= 0: P is a pooled child and `peer` the zygote's end of its control socket."""
        from stockade.sandbox import child

        try:
            if self.raw_clone:
                random.seed()        # no at-fork hooks ran: never share the zygote's state
            self.sock.close()
            os.close(gate_w)
            if peer >= 0:
                os.close(peer)
            self._close_zygote_fds(keep=r.netns_fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            child.sandboxed(r.req, r.args_fd, r.out_w, r.netns_fd, self.prep, gate_r, self.impls,
                            pooled=peer >= 0)
        finally:
            os._exit(71)

    def _close_zygote_fds(self, keep: int) -> None:
        """In a fresh child, before anything else: the zygote's own handles on other calls
        (their status pipes and pidfds), on pooled children (control sockets, pidfds) and on
        namespaces are closed at once, not only by the fd layer's close_range later: a child
        must never hold another call's status pipe open (its caller waits for EOF on it)."""
        fds = [self.own_pidns, self.own_netns]
        fds += [x for c in self.calls.values() for x in (c.status_w, c.pidfd)]
        fds += [x for a in self.armed.values() for x in (a.ctl.fileno(), a.pidfd, a.ns_hold)]
        fds += [c.ns_hold for c in self.calls.values()]
        fds += [s.netns_fd for s in self.slots.values()]
        for fd in fds:
            if fd >= 0 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def shutdown(self) -> None:
        from stockade.sandbox import libc

        for c in self.calls.values():
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._flush(None)
        with contextlib.suppress(OSError):
            libc.umount2(self.prep.root_dir, libc.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(self.prep.root_dir)


def _fd_bytes(fds: list[int]) -> bytes:
    return b"".join(f.to_bytes(4, sys.byteorder) for f in fds)


def _kill_and_reap(pid: int, pidfd: int) -> None:
    """A child that will never run its call: kill it (pid 1 of its namespace: all of it) and reap."""
    with contextlib.suppress(OSError):
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if pidfd >= 0:
        os.close(pidfd)


def start(sock: socket.socket, raw_clone: bool = True) -> Zygote:
    """The handshake: read the gateway's init message, prepare everything, report the probes.

    `raw_clone=False` forks with os.fork (at-fork hooks run): a parameter for test code, never
    read from the environment."""
    msg, _ = _recv(sock)
    init = json.loads(msg or b"{}")
    prep, impls, status = prepare(init)
    info = status.pop("cgroup_info")
    z = Zygote(sock, prep, impls, info, init.get("cgroup_parent", "stockade"), str(init.get("home_tag") or ""),
               raw_clone)
    sock.send(json.dumps(status).encode())
    gc.collect()
    gc.freeze()    # forked children then share the heap without GC-induced copy-on-write
    gc.disable()
    return z


def serve(sock: socket.socket, raw_clone: bool = True) -> None:
    """The event loop: requests on `sock`, one pidfd per running call, deadlines."""
    start(sock, raw_clone).serve_forever()


def main(raw_clone: bool = True) -> None:
    from stockade.sandbox import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # the gateway died: so do we
    libc.retitle(TITLE)   # every child's /proc/1/cmdline: no interpreter or install path
    fd = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C goes to the gateway; it closes us
    serve(sock, raw_clone)


if __name__ == "__main__":
    main()
