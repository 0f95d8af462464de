"""Gateway side of the sandbox: start the zygote, send it calls, map outcomes to errors.

`SandboxExecutor.run` is the pipeline's ExecutorHook for `execution: sandbox` definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from stockade.capabilities import workspace
from stockade.capabilities.registry import load_registry
from stockade.core.encoding import write_all
from stockade.core.errors import StockadeError, err
from stockade.core.home import Home
from stockade.core.logs import log
from stockade.egress import netns
from stockade.sandbox import Profile, agentns
from stockade.sandbox.cgroups import block_devices
from stockade.sandbox.pool import PER_CALL
from stockade.sandbox.profile import resolve

# definition -> (the pack's store dir, ctx.extra for the child, the profile the pack asks for)
PackInfo = Callable[[Any], tuple[str, dict[str, Any], dict[str, Any]]]
# (agent, pack, granted egress entries) -> the path of the namespace the pack's calls join
PackNetns = Callable[[str, str, tuple[str, ...]], str]


class ProfileSource(Protocol):
    """The policy part as the sandbox sees it: the agent's `sandbox:` mapping (None: nothing set)."""

    def sandbox_profile(self, agent: str) -> Mapping[str, Any] | None: ...

DEFINITIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "capabilities", "definitions")
SIGXCPU = 24
HANDOFF_TIMEOUT = 5.0   # seconds the zygote may take to answer a request (it answers in < 1 ms)
ZYGOTE_PATH = "/usr/local/bin:/usr/bin:/bin"

_UNAVAILABLE = [{"action": "check_health",
                 "description": "Call system.health (or run `stockade doctor`) to see which sandbox layer is missing."}]


def sandbox_modules() -> list[str] | None:
    """The implementation modules that hold an `execution: sandbox` capability: the only ones
    the zygote imports (a smaller heap for every per-call clone). None (import them all) when
    the registry does not load; the gateway reports that problem itself."""
    try:
        reg = load_registry()
    except Exception:   # noqa: BLE001 - the gateway's own load reports the problem
        return None
    return sorted({reg.impl(d.name).__module__ for d in reg.all() if d.execution == "sandbox"})


def map_outcome(header: dict[str, Any], payload: bytes, profile: Profile) -> dict[str, Any]:
    """Pure: the monitor's header + the child's payload -> result dict, or raise StockadeError."""
    if header.get("status") == "setup_error":
        raise err("SandboxUnavailable", f"the sandbox could not be set up ({header.get('error', 'unknown')})",
                  _UNAVAILABLE)
    if header.get("timeout"):
        raise err("Timeout", f"the call did not finish within {profile.timeout:g}s; it and every process it "
                  "started were killed", timeout=profile.timeout)
    if header.get("overflow") or len(payload) > profile.max_output_bytes:
        raise err("ResourceExhausted", f"the result exceeded {profile.max_output_bytes} bytes",
                  resource="output", limit=profile.max_output_bytes)
    oom = _int(header.get("oom_kill")) > 0
    pids = _int(header.get("pids_max")) > 0
    body: dict[str, Any] | None = None
    if payload:
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
    if body is not None and "setup_error" in body:
        raise err("SandboxUnavailable", f"the sandbox could not be set up ({body['setup_error']})", _UNAVAILABLE)
    sig = header.get("signal")
    if sig == SIGXCPU:
        raise err("ResourceExhausted", "the call used up its CPU time", resource="cpu_time")
    if body is not None and "ok" in body and sig is None:
        if not isinstance(body["ok"], dict):
            raise err("Internal", "the capability returned a non-object result")
        return body["ok"]
    e = (body or {}).get("error") if body else None
    if oom or (isinstance(e, dict) and e.get("exception") == "MemoryError"):
        raise err("ResourceExhausted", f"the call ran out of memory (limit {profile.memory} bytes)",
                  resource="memory", limit=profile.memory)
    if pids:
        raise err("ResourceExhausted", f"the call hit the process limit ({profile.pids})",
                  resource="pids", limit=profile.pids)
    if isinstance(e, dict) and isinstance(e.get("type"), str):
        data: dict[str, Any] = e["data"] if isinstance(e.get("data"), dict) else {}
        rec = e.get("recovery") if isinstance(e.get("recovery"), list) else None
        return _raise(StockadeError(e["type"], str(e.get("message", ""))[:2000], rec, data))
    if sig is not None:
        raise err("Internal", f"the sandboxed call was killed by signal {sig}")
    raise err("Internal", f"the sandboxed call ended without a result (exit {header.get('code')})")


def early_result(payload: bytes, req: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Pure: the call's result when the payload alone decides the outcome, else None.

    Only a complete `{"ok": {...}}` does: P writes it after its handler returned and its
    namespace is drained, as its last act before `_exit`, so a signal, deadline or OOM kill the
    report could still show came after the call had finished. Errors, setup failures and
    anything unparsable wait for the report (OOM, pids and CPU kills, timeouts are read there).
    So does a pack call: a pack's own code runs inside P and could write a result without
    draining, so its answer waits for P's exit (every process of the call gone), as before."""
    if (req or {}).get("handler") == "pack" or not payload.startswith(b'{"ok": '):
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    ok = body.get("ok") if isinstance(body, dict) else None
    return ok if isinstance(ok, dict) and "setup_error" not in body else None


def _header(report: bytes) -> dict[str, Any]:
    try:
        header = json.loads(report)
        if isinstance(header, dict):
            return header
    except ValueError:
        pass
    return {"status": "setup_error", "error": "no report from the zygote"}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _raise(e: StockadeError) -> dict[str, Any]:
    raise e


@functools.lru_cache(maxsize=64)
def profile_dict(p: Profile) -> dict[str, Any]:
    """Profile.to_dict, once per distinct profile (dataclasses.asdict deep-copies every field: it
    was the gateway's largest cost per sandboxed call). Read-only: callers only encode it."""
    return p.to_dict()


def intersect(policy: Profile, asked: dict[str, Any]) -> Profile:
    """Pure: a pack gets what its manifest asks for, never more than the policy allows."""
    d = policy.to_dict()
    if asked.get("seccomp") == "strict":
        d["seccomp"] = "strict"
    if asked.get("memory"):
        d["memory"] = min(d["memory"], int(asked["memory"]))
    if asked.get("timeout"):
        d["timeout"] = min(d["timeout"], float(asked["timeout"]))
    wanted = set(asked.get("egress") or [])
    d["egress"] = [e for e in d["egress"] if e in wanted]
    return Profile.from_dict(d)


class SandboxExecutor:
    """Owns the zygote process and the socket to it."""

    def __init__(self, home: Home, *, host_uid: int = 100_000, call_timeout: float = 30.0,
                 max_output_bytes: int = 1024 * 1024, cgroup_parent: str = "stockade",
                 cgroup_version: int | None = None, db: sqlite3.Connection | None = None,
                 policy: ProfileSource | None = None, pack_info: PackInfo | None = None,
                 gateway_health: dict[str, Any] | None = None, pack_netns: PackNetns | None = None,
                 pool: bool = False):
        self.home = home
        # Pre-armed children (issue 16): the zygote keeps a few per (agent, profile) ready.
        self.pool = pool
        self.pool_view: dict[str, Any] = {}       # the zygote's last report of it
        self._generation: dict[str, int] = {}     # per agent, bumped by invalidate(): part of the slot
        self._all_generation = 0
        self.last_child: dict[str, Any] = {}      # host pid of the last call's child, pooled or not
        self.host_uid = host_uid
        self.base = Profile(timeout=call_timeout, max_output_bytes=max_output_bytes)
        self.cgroup_parent = cgroup_parent
        self.cgroup_version = cgroup_version
        self.status: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.lock: asyncio.Lock | None = None
        self.policy = policy                # asked for an agent's profile at each call
        self.db = db                        # the agents table: an agent's index gives its host uid
        self.gateway_health = gateway_health  # the gateway's health map, kept truthful on failures
        self._agents: dict[str, dict[str, Any]] = {}
        # From the packs part: definition -> (store dir, ctx.extra, the pack's requested profile).
        self.pack_info = pack_info
        # From the egress part: the pack's own namespace with rules for exactly its granted
        # entries. Without it (no egress part running) a pack gets a namespace with only `lo`.
        self.pack_netns: PackNetns = pack_netns or self._pack_netns_without_egress
        self._last_restart = 0.0
        self._restarts = 0
        self.handoff_timeout = HANDOFF_TIMEOUT
        self.stalls = 0
        self.repairs: list[dict[str, Any]] = []   # what the zygote re-created (last 20)
        self.kills: list[dict[str, Any]] = []     # OOM / pids-limit kills, by call (last 20)
        self._late: set[asyncio.Future[None]] = set()   # reports of calls answered early

    # -- lifecycle ---------------------------------------------------------------------------
    def zygote_command(self, fd: int) -> list[str]:
        """The zygote's command line (a test entry overrides this in test code, never by config)."""
        return [sys.executable, "-I", "-B", "-m", "stockade.sandbox.zygote", str(fd)]

    def start_zygote(self) -> dict[str, Any]:
        """Synchronous: spawn the zygote and wait for its probe report (prefork time).

        Its environment is a fixed minimal one: nothing of the gateway's (whose PATH names the
        install) reaches the zygote or the sandboxed children it forks.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": ZYGOTE_PATH, **{k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL")}}
        self.proc = subprocess.Popen(
            self.zygote_command(child.fileno()),
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL, close_fds=True, cwd="/")
        child.close()
        shared = self.home.shared
        if self.home.root.exists():
            shared.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(shared, 0o755)  # noqa: S103 - the home above stays 0700; the sandbox uid must list it
        parent.send(json.dumps({"cgroup_parent": self.cgroup_parent, "cgroup_version": self.cgroup_version,
                                "home_tag": netns.home_tag(self.home),
                                "shared": str(shared) if shared.is_dir() else None,
                                "definitions": DEFINITIONS_DIR,
                                "modules": sandbox_modules()}).encode())
        parent.settimeout(60)
        msg = parent.recv(1 << 20)
        if not msg:
            raise RuntimeError("the sandbox zygote exited during start-up")
        self.status = json.loads(msg)
        parent.settimeout(None)
        parent.setblocking(False)
        self.sock = parent
        return self.status

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    # -- health -------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        out = list(self.status.get("problems") or [])
        if self.proc is None or self.proc.poll() is not None:
            out.append("zygote: not running")
        return out

    def publish_health(self) -> None:
        """Keep system.health truthful: called on every change (restart, stall, repair, failure)."""
        gh = self.gateway_health
        if gh is not None:
            gh["sandbox"] = {**gh.get("sandbox", {}), **self.health()}

    def health(self) -> dict[str, Any]:
        s = self.status
        problems = self.problems()
        abi = s.get("landlock_abi", 0)
        return {
            "status": "critical" if problems else ("degraded" if abi < 6 else "ok"),
            "problems": problems,
            "landlock_abi": abi,
            "landlock_net": abi >= 4,
            "landlock_scopes": abi >= 6,
            "seccomp": s.get("seccomp"),
            "user_namespaces": s.get("userns"),
            "cgroup": s.get("cgroup"),
            "zygote_pid": s.get("pid"),
            "zygote_rss_kb": s.get("rss_kb"),
            "zygote_restarts": self._restarts,
            "zygote_stalls": self.stalls,
            "repairs": self.repairs[-5:],
            "kills": self.kills[-5:],
            "pool": {"enabled": self.pool, **self.pool_view},
        }

    # -- per agent -----------------------------------------------------------------------------
    def _agent(self, agent: str) -> dict[str, Any]:
        a = self._agents.get(agent)
        spec = dict(self.policy.sandbox_profile(agent) or {}) if self.policy is not None else {}
        if a is not None and spec.get("workspace"):
            return self._shared_workspace(agent, a["uid"], spec)
        if a is not None and "shared" not in a:
            return a
        idx = None
        if self.db is not None:
            row = self.db.execute("SELECT rowid FROM agents WHERE name=?", (agent,)).fetchone()
            idx = row[0] if row else None
        if idx is None:
            raise err("SandboxUnavailable", f"agent {agent!r} has no sandbox identity", _UNAVAILABLE)
        uid = self.host_uid + int(idx)
        if spec.get("workspace"):      # a directory of the owner's, shared through ACLs (issue 18)
            return self._shared_workspace(agent, uid, spec)
        ws, trash = self.home.workspace(agent), self.home.trash / agent
        for d in (ws, trash):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(d)
            if not os.path.isdir(d) or os.path.islink(d):
                raise err("SandboxUnavailable", f"{d} is not a directory", _UNAVAILABLE)
            if st.st_uid != uid or st.st_gid != uid:
                os.chown(d, uid, uid)
            os.chmod(d, 0o700)
        a = {"uid": uid, "workspace": str(ws), "trash": str(trash),
             "devices": block_devices([str(ws)]), "netns": None}
        self._agents[agent] = a
        return a

    def _shared_workspace(self, agent: str, uid: int, spec: dict[str, Any]) -> dict[str, Any]:
        """The agent's /workspace is the owner's directory: checked (capabilities.workspace.check),
        never chowned; the agent's uid and the owner's account get rwX ACLs on what is there and,
        by default ACL, on what is created later. Done once per (path, owner)."""
        checked = workspace.check(str(spec["workspace"]), self.home.root)
        owner = workspace.owner_uid(spec.get("workspace_owner"), checked.path)
        key = (str(checked.path), owner)
        cached = self._agents.get(agent)
        if cached is not None and cached.get("shared") == key:
            return cached
        try:
            workspace.grant(checked.path, [uid, *([owner] if owner else [])])
        except OSError as e:
            raise err("SandboxUnavailable", f"workspace {checked.path}: cannot set ACLs ({e.strerror}); the "
                      "filesystem must support POSIX ACLs", _UNAVAILABLE) from None
        for w in checked.warnings:
            log.warning("agent %s: %s", agent, w)
        trash = self.home.trash / agent
        trash.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.lstat(trash).st_uid != uid:
            os.chown(trash, uid, uid)
        a = {"uid": uid, "workspace": str(checked.path), "trash": str(trash),
             "devices": block_devices([str(checked.path)]), "netns": None, "shared": key,
             "warnings": list(checked.warnings)}
        self._agents[agent] = a
        return a

    async def _netns(self, agent: str, a: dict[str, Any]) -> str:
        if a["netns"] is None or not os.path.exists(a["netns"]):
            try:
                a["netns"] = await asyncio.to_thread(agentns.ensure_agent_netns, self.home, agent)
            except Exception as e:
                raise err("SandboxUnavailable", f"the agent's network namespace could not be set up ({e})"[:300],
                          _UNAVAILABLE) from None
        return a["netns"]

    def _pack_netns_without_egress(self, agent: str, pack: str, _granted: tuple[str, ...]) -> str:
        return agentns.ensure_agent_netns(self.home, netns.pack_principal(agent, pack))

    async def _netns_of_pack(self, agent: str, pack: str, granted: tuple[str, ...]) -> str:
        """A pack's calls never join the agent's namespace (its rules allow the agent's whole
        list); they join the pack's own, whose rules allow exactly `granted`."""
        try:
            return await asyncio.to_thread(self.pack_netns, agent, pack, granted)
        except Exception as e:
            msg = e.message if isinstance(e, StockadeError) else str(e)
            raise err("SandboxUnavailable", f"the pack's network namespace could not be set up ({msg})"[:300],
                      _UNAVAILABLE) from None

    def profile(self, agent: str) -> Profile:
        try:
            return resolve(self.policy.sandbox_profile(agent) if self.policy is not None else None, self.base)
        except (ValueError, TypeError) as e:
            raise err("SandboxUnavailable", f"the agent's sandbox profile is invalid ({e})", _UNAVAILABLE) from None

    # -- the hook --------------------------------------------------------------------------------
    async def _restart_if_dead(self) -> None:
        """A dead zygote is replaced (at most every 10 s). Safe at any time: the new zygote is a
        fresh exec'd interpreter, so it inherits none of the gateway's memory (keys, secrets)."""
        if self.proc is None or self.proc.poll() is None or self.status.get("problems"):
            return
        now = time.monotonic()
        if now - self._last_restart < 10:
            return
        self._last_restart = now
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            if self.proc is not None and self.proc.poll() is not None:
                old = self.sock
                self.sock = None
                if old is not None:
                    old.close()
                self.proc = None
                self._restarts += 1
                try:
                    await asyncio.to_thread(self.start_zygote)
                except Exception as e:
                    self.status = {"problems": [f"zygote: restart failed: {type(e).__name__}: {e}"[:300]]}
                self.publish_health()

    async def run(self, caller: Any, definition: Any, args: dict[str, Any], call_id: str) -> dict[str, Any]:
        await self._restart_if_dead()
        problems = self.problems()
        if problems:
            self.publish_health()
            raise err("SandboxUnavailable", "the sandbox is not available: " + "; ".join(problems)[:400],
                      _UNAVAILABLE)
        agent = caller.agent
        profile = agent_profile = self.profile(agent)
        binds = {}
        extra: dict[str, Any] = {}
        if getattr(definition, "pack", None):
            if self.pack_info is None:
                raise err("SandboxUnavailable", "packs are not available in this gateway", _UNAVAILABLE)
            host_path, extra, pack_profile = self.pack_info(definition)
            binds["pack"] = host_path
            profile = intersect(profile, pack_profile)
        a = self._agent(agent)
        if getattr(definition, "pack", None):
            netns_path = await self._netns_of_pack(agent, definition.pack, profile.egress)
        else:
            netns_path = await self._netns(agent, a)
        req = {"call_id": call_id, "agent": agent, "capability": definition.name, "args": args,
               "profile": profile_dict(profile), "agent_profile": profile_dict(agent_profile),
               "host_uid": a["uid"], "host_gid": a["uid"], "netns": netns_path,
               "io_devices": a["devices"],
               "binds": {"workspace": a["workspace"], "trash": a["trash"], **binds}}
        if extra:
            req["extra"] = extra
            req["handler"] = "pack"
        elif self.pool:
            req["pool"] = True
            req["pool_gen"] = [self._all_generation, self._generation.get(agent, 0)]
        try:
            netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise err("SandboxUnavailable", f"the agent's network namespace is missing ({e.strerror})",
                      _UNAVAILABLE) from None
        try:
            return await self._call(req, profile, netns_fd)
        finally:
            os.close(netns_fd)

    async def invalidate(self, agent: str | None = None) -> int:
        """Kill every pre-armed child of `agent` (None: of every agent), unused: its policy,
        profile or egress changed, or it was revoked. The generation bump alone already keeps
        such a child from matching any later request; the flush frees it now. Returns how many."""
        if agent is None:
            self._all_generation += 1
        else:
            self._generation[agent] = self._generation.get(agent, 0) + 1
        if not self.pool or self.sock is None:
            return 0
        if self.lock is None:
            self.lock = asyncio.Lock()
        try:
            async with self.lock:
                reply = await self._hand_off(asyncio.get_running_loop(), [], b"flush " + (agent or "").encode())
        except (OSError, ValueError):
            return 0      # no zygote: nothing armed either
        self._note_pool(reply)
        return int(reply.get("flushed") or 0)

    async def pool_stats(self) -> dict[str, Any]:
        """Ask the zygote for the pool now (health between calls; tests): the view plus the host
        pids of the ready children."""
        if self.sock is None:
            return {}
        if self.lock is None:
            self.lock = asyncio.Lock()
        try:
            async with self.lock:
                reply = await self._hand_off(asyncio.get_running_loop(), [], b"stats")
        except (OSError, ValueError):
            return {}
        self._note_pool(reply)
        return reply

    def _note_pool(self, reply: dict[str, Any]) -> None:
        if isinstance(reply.get("pool"), dict):
            self.pool_view = reply["pool"]
            gh = self.gateway_health
            if gh is not None and isinstance(gh.get("sandbox"), dict):
                gh["sandbox"]["pool"] = {"enabled": self.pool, **self.pool_view}

    async def _hand_off(self, loop: asyncio.AbstractEventLoop, fds: list[int], msg: bytes = b"call") -> dict[str, Any]:
        """Send one request and wait for the zygote's answer, with a deadline (under `lock`).

        No socket (a restart failed) or no answer in time is SandboxUnavailable, never an
        assertion. A zygote that does not answer (stopped, wedged) is killed: a late answer
        would otherwise be read as the next call's, and the next call restarts it.
        """
        if self.sock is None:
            raise OSError(111, "the zygote is being replaced")
        raw = b"".join(f.to_bytes(4, sys.byteorder) for f in fds)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, raw)] if fds else []
        self.sock.sendmsg([msg], anc)
        got = _recv(loop, self.sock)
        try:
            data = await asyncio.wait_for(asyncio.shield(got), self.handoff_timeout)
        except asyncio.CancelledError:
            # The caller went away, but the answer to this message still comes and is this
            # message's: it is read before the lock passes on, or the next request would take it
            # for its own (another call's child pid and pool view, and so on for every later
            # one). If it cannot be read, the zygote is replaced: nothing can pair them again.
            try:
                await asyncio.wait_for(got, self.handoff_timeout)
            except BaseException:
                got.cancel()
                if self.proc is not None:
                    self.proc.kill()
            raise
        except TimeoutError:
            got.cancel()
            self.stalls += 1
            if self.proc is not None:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
            self.publish_health()
            raise OSError(62, f"no answer within {self.handoff_timeout:g} s (stalled; replacing it)") from None
        reply = json.loads(data or b'{"error": "zygote gone"}')
        return reply if isinstance(reply, dict) else {"error": "bad reply"}

    async def _call(self, req: dict[str, Any], profile: Profile, netns_fd: int = -1) -> dict[str, Any]:
        if self.lock is None:
            self.lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        # Two memfds: the envelope the zygote reads, and the arguments only the child reads (they
        # may hold resolved secrets; the zygote's heap is inherited by every later child). The
        # call's own fields go with the message: the envelope is then the same for every call of
        # one agent and profile, and the zygote parses it once (zygote._parse_request).
        env = {k: v for k, v in req.items() if k not in PER_CALL}
        msg = b"call " + json.dumps({k: req[k] for k in PER_CALL if k in req and k != "args"}).encode()
        memfd = os.memfd_create("stockade-call", os.MFD_CLOEXEC)
        argfd = os.memfd_create("stockade-args", os.MFD_CLOEXEC)
        r, w = os.pipe2(os.O_CLOEXEC)        # the child's JSON result
        sr, sw = os.pipe2(os.O_CLOEXEC)      # the zygote's report once the child is reaped
        cap = profile.max_output_bytes
        overflow = False
        pidfd = -1

        def on_overflow() -> None:
            nonlocal overflow
            overflow = True
            if pidfd >= 0:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)

        # Both pipes are read from now on, not after the zygote's reply: a pooled child may
        # finish before the zygote has sent it (they share two cores), and its result is then
        # read at once instead of one loop turn after the reply. The futures own r and sr.
        payload_task = _read_all(r, cap, on_overflow)
        report_task = _read_all(sr, 65536)
        try:
            for fd, obj in ((memfd, env), (argfd, req.get("args", {}))):
                write_all(fd, json.dumps(obj).encode())
            async with self.lock:   # a restart holds it: calls wait for the new zygote
                reply = await self._hand_off(loop, [memfd, argfd, w, sw] + ([netns_fd] if netns_fd >= 0 else []), msg)
        except (OSError, ValueError) as e:
            payload_task.cancel()
            report_task.cancel()
            raise err("SandboxUnavailable", f"the sandbox zygote did not answer ({e})", _UNAVAILABLE) from None
        except BaseException:
            payload_task.cancel()
            report_task.cancel()
            raise
        finally:
            os.close(memfd)
            os.close(argfd)
            os.close(w)
            os.close(sw)
        if "pid" not in reply:
            payload_task.cancel()
            report_task.cancel()
            raise err("SandboxUnavailable", f"the sandbox refused the call ({reply.get('error')})", _UNAVAILABLE)
        self._note_pool(reply)
        self.last_child = {"pid": reply["pid"], "pooled": bool(reply.get("pooled"))}
        if reply.get("repaired"):
            self.repairs = [*self.repairs[-19:], {"at": time.time(), "agent": req.get("agent"),
                                                  "repaired": str(reply["repaired"])}]
            self.publish_health()
        try:
            pidfd = os.pidfd_open(reply["pid"])
        except OSError:
            pidfd = -1
        try:
            payload = await asyncio.wait_for(payload_task, profile.timeout + 10)
            early = None if overflow else early_result(payload, req)
            if early is not None:
                # P drained its pid namespace before its result's EOF: nothing of the call runs.
                # Its exit, reaping and the zygote's report are off the caller's path.
                late = asyncio.ensure_future(self._late_report(req, report_task))
                self._late.add(late)
                late.add_done_callback(self._late.discard)
                return early
            report = await asyncio.wait_for(report_task, profile.timeout + 10)
        except asyncio.CancelledError:
            payload_task.cancel()
            report_task.cancel()
            raise
        except TimeoutError:
            report_task.cancel()
            if pidfd >= 0:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            raise err("Timeout", f"the call did not finish within {profile.timeout:g}s",
                      timeout=profile.timeout) from None
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        header = _header(report)
        header["overflow"] = overflow
        self._note_kills(req, header)
        return map_outcome(header, payload if not overflow else b"", profile)

    async def _late_report(self, req: dict[str, Any], report: asyncio.Future[bytes]) -> None:
        """The zygote's report of a call already answered: its kills still count in health. A
        task (cancelled with its loop, which cancels the read and closes the pipe)."""
        self._note_kills(req, _header(await report))

    def _note_kills(self, req: dict[str, Any], header: dict[str, Any]) -> None:
        """A kill counted in the call's own cgroup leaf belongs to that call: keep it for health."""
        oom, pids = _int(header.get("oom_kill")), _int(header.get("pids_max"))
        if oom or pids:
            kill = {"at": time.time(), "agent": req.get("agent"), "call_id": req.get("call_id"),
                    "capability": req.get("capability"), "oom_kill": oom, "pids_max": pids}
            self.kills = [*self.kills[-19:], kill]
            self.publish_health()


def _read_all(fd: int, cap: int, on_overflow: Any = None) -> asyncio.Future[bytes]:
    """Read a pipe to EOF without blocking the loop; past `cap` bytes keep draining, drop the data.

    A future, not a coroutine: no task per pipe (two pipes and the zygote's reply per call; the
    tasks and their extra loop turns were a good part of the gateway's CPU per call). The fd is
    closed when the future is done, cancelled included."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    done: asyncio.Future[bytes] = loop.create_future()
    over = False

    def on_readable() -> None:
        nonlocal over
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if not over:
                    buf.extend(chunk)
                    if len(buf) > cap:
                        over = True
                        buf.clear()
                        if on_overflow is not None:
                            on_overflow()
        except BlockingIOError:
            return
        except OSError:
            pass
        if not done.done():
            done.set_result(bytes(buf))

    def closed(_f: asyncio.Future[bytes]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, on_readable)
    done.add_done_callback(closed)
    return done


def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Future[bytes]:
    """One message from the zygote's socket, as a future (loop.sock_recv is a coroutine: under
    wait_for it costs a task per call)."""
    fd = sock.fileno()
    got: asyncio.Future[bytes] = loop.create_future()

    def on_readable() -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if not got.done():
                got.set_exception(e)
            return
        if not got.done():
            got.set_result(data)

    loop.add_reader(fd, on_readable)
    got.add_done_callback(lambda _f: loop.remove_reader(fd))
    return got
