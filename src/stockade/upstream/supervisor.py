"""The supervisor of upstream server instances: start, call, restart with backoff, health.

One instance per (server, agent) by default (`instances: per-agent`), so one agent's session
state (a server's memory, its /data) never reaches another; `shared` runs one instance for
every agent, as the base uid. Instances start on an agent's first call. One that exits
unexpectedly is restarted by its watcher after a backoff that doubles from 1 s to 60 s (reset
once it has run for a minute); a call meanwhile waits for it up to its start timeout.
A `url` server is not run but connected to: its instance is an MCP session (per agent, or one
shared), reopened with the same backoff when it breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stockade.audit.redact import redact
from stockade.core.errors import StockadeError, err
from stockade.core.home import Home
from stockade.upstream import confine

if TYPE_CHECKING:
    from typing import TypeAlias

    from stockade.upstream.client import Connection
    from stockade.upstream.http import HttpConnection

    Conn: TypeAlias = Connection | HttpConnection
from stockade.upstream.config import ServerConfig
from stockade.upstream.tools import shape_result

log = logging.getLogger("stockade.upstream")
BACKOFF_MIN, BACKOFF_MAX, STABLE_AFTER = 1.0, 60.0, 60.0
LINE_SLACK = 64 * 1024
RELIST_EVERY = 1.0

# (agent) -> that agent's sandbox host uid; (server, agent) -> env values with secrets resolved
UidOf = Callable[[str], int]
EnvOf = Callable[[str, str, ServerConfig], tuple[dict[str, str], list[str]]]
# (server, its `pack:` config) -> the command config that runs the pack's verified entry, and its binds
PackLaunch = Callable[[str, ServerConfig], tuple[ServerConfig, tuple[Any, ...]]]


def backoff(failures: int) -> float:
    """Pure: seconds before restart number `failures` (1, 2, 4, ... 60)."""
    return min(BACKOFF_MAX, BACKOFF_MIN * (2 ** max(0, failures - 1)))


@dataclass
class Instance:
    server: str
    agent: str
    conn: Conn | None = None
    placement: confine.Placement | None = None
    state: str = "stopped"                 # starting | running | restarting | failed | stopped
    restarts: int = 0
    failures: int = 0                      # consecutive, for the backoff
    started_at: float = 0.0
    last_exit: int | None = None
    last_error: str | None = None
    secrets: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    up: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "restarts": self.restarts}
        if self.conn is not None and self.conn.pid:
            out["pid"] = self.conn.pid
        if self.last_exit is not None:
            out["last_exit"] = self.last_exit
        if self.last_error:
            out["error"] = self.last_error[:300]
        return out


class Supervisor:
    def __init__(self, home: Home, servers: dict[str, ServerConfig], *, uid_of: UidOf, base_uid: int,
                 env_of: EnvOf | None = None, egress: Callable[[], Any] = lambda: None,
                 on_change: Callable[[], None] = lambda: None,
                 on_tools_changed: Callable[[str, list[dict[str, Any]]], Awaitable[None]] | None = None,
                 launcher: tuple[str, ...] | None = None, pack_launch: PackLaunch | None = None):
        self.home = home
        self.servers = dict(servers)
        self.uid_of = uid_of
        self.base_uid = base_uid
        self.env_of = env_of or (lambda _s, _a, cfg: (dict(cfg.env), []))
        self.egress = egress
        self.on_change = on_change
        self.on_tools_changed = on_tools_changed
        self.launcher = launcher
        self.pack_launch = pack_launch
        self.instances: dict[tuple[str, str], Instance] = {}
        self.stopping = False

    # -- instances ---------------------------------------------------------------------------
    def key(self, server: str, agent: str) -> tuple[str, str]:
        cfg = self.servers[server]
        return (server, agent if cfg.instances == "per-agent" else confine.DISCOVERY)

    async def _spawn(self, inst: Instance) -> None:
        cfg = self.servers[inst.server]
        if cfg.is_http:
            return await self._connect(inst, cfg)
        extra: tuple[Any, ...] = ()
        if cfg.pack is not None:        # the pack is looked up, trusted and read again at every start
            if self.pack_launch is None:
                raise err("SandboxUnavailable", f"upstream server {inst.server}: packs are not running here")
            cfg, extra = self.pack_launch(inst.server, cfg)     # the gateway's db: on its thread
        uid = self.base_uid if inst.agent == confine.DISCOVERY else self.uid_of(inst.agent)
        env, inst.secrets = self.env_of(inst.server, inst.agent, cfg)
        inst.state = "starting"
        try:
            inst.placement = await asyncio.to_thread(confine.place, self.home, self.egress(), inst.agent,
                                                     inst.server, cfg, uid, env, extra)
        except StockadeError:
            raise
        except Exception as e:
            raise err("SandboxUnavailable", f"upstream server {inst.server}: its sandbox could not be set up "
                      f"({type(e).__name__}: {e})"[:400]) from None
        label = inst.server if inst.agent == confine.DISCOVERY else f"{inst.server}[{inst.agent}]"
        # The client (and the mcp SDK, ~2 s of imports) loads on the first start of a server, so
        # `stockade init` and the other commands that load every part never pay for it.
        from stockade.upstream.client import LAUNCHER, Connection

        conn = Connection(label, inst.placement.spec, max_line=cfg.max_output_bytes * 2 + LINE_SLACK,
                          startup_timeout=cfg.startup_timeout, launcher=self.launcher or LAUNCHER)
        conn.on_tools_changed = self._tools_changed(inst.server, conn)
        inst.conn = conn
        await self._started(inst, conn, label)

    async def _connect(self, inst: Instance, cfg: ServerConfig) -> None:
        """A server already running on loopback: a session per agent (or one shared), its headers
        with secrets resolved for that agent. Nothing to confine: no uid, namespace or cgroup."""
        headers, inst.secrets = self.env_of(inst.server, inst.agent, cfg)
        inst.state = "starting"
        label = inst.server if inst.agent == confine.DISCOVERY else f"{inst.server}[{inst.agent}]"
        from stockade.upstream.http import HttpConnection

        assert cfg.url is not None  # noqa: S101
        conn = HttpConnection(label, cfg.url, headers, max_bytes=cfg.max_output_bytes * 2 + LINE_SLACK,
                              startup_timeout=cfg.startup_timeout)
        conn.on_tools_changed = self._tools_changed(inst.server, conn)
        inst.conn = conn
        await self._started(inst, conn, label)

    async def _started(self, inst: Instance, conn: Conn, label: str) -> None:
        try:
            await conn.start()
        except StockadeError as e:
            why = conn.setup_error or ""
            if self.servers[inst.server].pack is not None and why.startswith("PackSignatureInvalid: "):
                # packserver's refusal, naming the file (only a pack server's is taken as one)
                raise err("PackSignatureInvalid", f"upstream server {inst.server}: "
                          f"{why[len('PackSignatureInvalid: '):]}"[:500]) from None
            raise e from None
        inst.state, inst.started_at, inst.last_error = "running", time.monotonic(), None
        inst.up.set()
        inst.watcher = asyncio.create_task(self._watch(inst, conn), name=f"upstream-watch-{label}")
        self.on_change()

    def _tools_changed(self, server: str, conn: Conn) -> Callable[[], Awaitable[None]]:
        """The server said its tool list changed: list it again from that instance. A flood of
        notifications costs at most one listing per second (they are coalesced)."""
        state = {"busy": False, "again": False}

        async def changed() -> None:
            if state["busy"]:
                state["again"] = True
                return
            state["busy"] = True
            try:
                while True:
                    state["again"] = False
                    await self._relist(server, conn)
                    await asyncio.sleep(RELIST_EVERY)
                    if not state["again"]:
                        return
            finally:
                state["busy"] = False
        return changed

    async def _relist(self, server: str, conn: Conn) -> None:
        if self.on_tools_changed is None or self.stopping or not conn.alive:
            return
        try:
            listed = await asyncio.wait_for(conn.tools(), self.servers[server].startup_timeout)
        except (StockadeError, TimeoutError) as e:
            log.warning("upstream %s: listing its changed tools failed: %s", server, e)
            return
        await self.on_tools_changed(server, listed)

    async def ensure(self, server: str, agent: str) -> Instance:
        """The running instance of `server` for `agent` (started, or waited for)."""
        if server not in self.servers:
            raise err("CapabilityNotFound", f"no upstream server named {server!r}")
        k = self.key(server, agent)
        inst = self.instances.get(k)
        if inst is None:
            inst = self.instances[k] = Instance(*k)
        if inst.conn is not None and inst.conn.alive:
            return inst
        if inst.state == "restarting":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.up.wait(), self.servers[server].startup_timeout + backoff(inst.failures))
            if inst.conn is not None and inst.conn.alive:
                return inst
            raise err("Unreachable", f"upstream server {server} is restarting", last_error=inst.last_error)
        async with inst.lock:
            if inst.conn is None or not inst.conn.alive:
                try:
                    await self._spawn(inst)
                except StockadeError as e:
                    inst.state, inst.last_error = "failed", e.message
                    await self._release(inst)
                    self.on_change()
                    raise
        return inst

    async def _watch(self, inst: Instance, conn: Conn) -> None:
        """Restart an instance that exited on its own, after the backoff."""
        await conn.exited.wait()
        inst.up.clear()
        inst.last_exit = conn.exit_status
        if conn.setup_error:
            inst.last_error = conn.setup_error
        await self._release(inst)
        if self.stopping or inst.state == "stopped":
            return
        ran = time.monotonic() - inst.started_at
        inst.failures = 1 if ran > STABLE_AFTER else inst.failures + 1
        inst.state = "restarting"
        self.on_change()
        log.warning("upstream %s for %r exited (%s); restarting in %gs", inst.server, inst.agent,
                    inst.last_exit, backoff(inst.failures))
        await asyncio.sleep(backoff(inst.failures))
        if self.stopping or inst.state != "restarting":
            return
        async with inst.lock:
            try:
                inst.restarts += 1
                await self._spawn(inst)
            except StockadeError as e:
                inst.state, inst.last_error = "restarting", e.message
                await self._release(inst)
                inst.failures += 1
                self.on_change()
                inst.watcher = asyncio.create_task(self._retry_later(inst))

    async def _retry_later(self, inst: Instance) -> None:
        await asyncio.sleep(backoff(inst.failures))
        if not self.stopping and inst.state == "restarting":
            async with inst.lock:
                try:
                    inst.restarts += 1
                    await self._spawn(inst)
                except StockadeError as e:
                    inst.last_error, inst.failures = e.message, inst.failures + 1
                    await self._release(inst)
                    inst.watcher = asyncio.create_task(self._retry_later(inst))

    async def _release(self, inst: Instance) -> None:
        p, inst.placement = inst.placement, None
        if p is not None:
            await asyncio.to_thread(confine.release, p)

    async def stop_instance(self, inst: Instance) -> None:
        inst.state = "stopped"
        inst.up.clear()
        if inst.watcher is not None and inst.watcher is not asyncio.current_task():
            inst.watcher.cancel()
            with contextlib.suppress(BaseException):
                await inst.watcher
        if inst.conn is not None:
            await inst.conn.stop()
        await self._release(inst)

    async def restart(self, server: str) -> int:
        """Stop every instance of `server` (they start again on the next call). Returns how many."""
        found = [i for k, i in list(self.instances.items()) if k[0] == server]
        for inst in found:
            await self.stop_instance(inst)
            self.instances.pop((inst.server, inst.agent), None)
        self.on_change()
        return len(found)

    async def stop_agent(self, agent: str) -> int:
        """Stop and forget every instance of `agent` (revoked). Returns how many."""
        found = [i for (s, a), i in list(self.instances.items()) if a == agent and a != confine.DISCOVERY]
        for inst in found:
            await self.stop_instance(inst)
            self.instances.pop((inst.server, inst.agent), None)
            await asyncio.to_thread(confine.forget, self.home, inst.agent, inst.server)
        if found:
            self.on_change()
        return len(found)

    async def stop(self) -> None:
        self.stopping = True
        for inst in list(self.instances.values()):
            await self.stop_instance(inst)
        for server, agent in [*self.instances, *((s, confine.DISCOVERY) for s in self.servers)]:
            if server in self.servers and not self.servers[server].is_http:
                await asyncio.to_thread(confine.forget, self.home, agent, server)
        self.instances.clear()

    # -- calls -------------------------------------------------------------------------------
    async def discover(self, server: str) -> list[dict[str, Any]]:
        """The server's tools: from its shared instance, or from a short-lived discovery instance
        (base uid, `lo` only, no /data)."""
        cfg = self.servers[server]
        if cfg.instances == "shared":
            shared = await self.ensure(server, confine.DISCOVERY)
            assert shared.conn is not None  # noqa: S101
            return await asyncio.wait_for(shared.conn.tools(), cfg.startup_timeout)
        inst = Instance(server, confine.DISCOVERY)
        try:
            await self._spawn(inst)
            assert inst.conn is not None  # noqa: S101
            return await asyncio.wait_for(inst.conn.tools(), cfg.startup_timeout)
        finally:
            await self.stop_instance(inst)

    async def call(self, server: str, tool: str, agent: str, args: dict[str, Any]) -> dict[str, Any]:
        cfg = self.servers[server]
        inst = await self.ensure(server, agent)
        assert inst.conn is not None  # noqa: S101
        try:
            raw = await inst.conn.call(tool, args, cfg.timeout)
        except StockadeError as e:
            if not inst.secrets:
                raise
            raise StockadeError(e.type, redact(e.message, inst.secrets), e.recovery,
                                redact(e.data, inst.secrets)) from None
        out, size = shape_result(raw, cfg.max_output_bytes)
        if size > cfg.max_output_bytes:
            raise err("ResourceExhausted", f"the result of {server}.{tool} exceeded {cfg.max_output_bytes} bytes",
                      resource="output", limit=cfg.max_output_bytes)
        # The server holds its secrets; nothing it says may hand one to the agent.
        return redact(out, inst.secrets) if inst.secrets else out

    def logs(self, server: str) -> dict[str, list[str]]:
        return {(a or "(shared)"): list(i.conn.logs) for (s, a), i in self.instances.items()
                if s == server and i.conn is not None}

    def health(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        worst = "ok"
        for name in sorted(self.servers):
            insts = {(a or "(shared)"): i.status() for (s, a), i in self.instances.items() if s == name}
            # a url server's endpoint stays out (agents read health): `upstream list` shows it to the owner
            servers[name] = {"instances": insts, **({"kind": "url"} if self.servers[name].is_http else {})}
            if any(i["state"] in ("failed", "restarting") for i in insts.values()):
                worst = "degraded"
        return {"status": worst, "servers": servers}
