"""`stockade serve`: wire the parts around the pipeline and run the listeners.

Order matters. `prefork` hooks (the sandbox zygote) run first, in a single-threaded process,
before the event loop, any thread or the vault exists. Then each part's `start(gw)` plugs its
hook into the pipeline (audit before anything can call), the listeners bind, and
`run/ports.json` is written once they accept connections. Shutdown runs `stop` in reverse.

A part plugs in by providing `stockade/<part>/setup.py` with any of `prefork(gw)`,
`async start(gw)`, `async stop(gw)`, `init(home, policy_template)` (for `stockade init`), and
the tables `ADMIN_COMMANDS` (admin socket) and `RPC_METHODS` (JSON-RPC), which this wiring
registers at start-up. Every part listed in `PARTS`
must load: one that fails to import stops `serve` (exit 3, naming it) unless the owner switched it
off in `stockade.yaml` (`parts: {egress: off}`). Audit and policy cannot be switched off, and
`serve` refuses to run without them: the pipeline's stand-ins would allow every call and keep
records in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import uvicorn

from stockade.audit.writer import append_offline_or_admin
from stockade.capabilities.registry import load_registry
from stockade.core import sdnotify, volume
from stockade.core.admin import running as admin_running
from stockade.core.config import Config
from stockade.core.db import damaged_tables, write_lock_held
from stockade.core.db import serving as db_serving
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.events import EventBus
from stockade.core.home import Home, write_private
from stockade.core.home import init_home as core_init_home
from stockade.core.limits import MAX_CONNECTIONS
from stockade.core.logs import log
from stockade.core.wiring import Gateway, Listener
from stockade.edge.http import GuardedH11
from stockade.gateway import jsonrpc
from stockade.gateway.pipeline import Pipeline
from stockade.gateway.reload import Reloader
from stockade.release import gate as install_gate

__all__ = ["PARTS", "Gateway", "Listener", "StartupFailed", "build", "init_home", "load_part", "parts", "serve"]

PARTS = ("sandbox", "audit", "policy", "egress", "vault", "approvals", "supervision", "packs",
         "upstream", "perimeter")  # perimeter: doctor checks only (its daemon is `stockade perimeter serve`)
REQUIRED = ("audit", "policy")   # without them a call would be allowed by default or not recorded


class StartupFailed(Exception):
    """`serve` cannot start; the message names the part or stage and the cause (exit 3)."""


def parts(config: Config | None = None) -> list[ModuleType]:
    """Each part's `setup` module, in start order, less the ones the owner switched off.

    A part that does not import is an error, never skipped: a missing part would silently leave
    its stand-in (no policy, no audit) in the call path."""
    off = config.parts.off() if config is not None else frozenset()
    return [load_part(part) for part in PARTS if part not in off]


def load_part(part: str) -> ModuleType:
    """`stockade.<part>.setup`, or StartupFailed naming the part and why it does not load."""
    try:
        return importlib.import_module(f"stockade.{part}.setup")
    except Exception as e:
        raise StartupFailed(f"part {part} cannot load: {type(e).__name__}: {e}") from e


def init_home(home: Home, policy: str = "personal") -> list[str]:
    """`stockade init`: the home's layout, config and database (core), then what each part adds
    (its setup's `init(home, policy_template)`: policy template, audit key, TLS cert, ...).
    Every part loads, whatever the config switches off: a home is complete or refused."""
    loaded = parts(None)
    return core_init_home(home, policy, [part.init for part in loaded if hasattr(part, "init")])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)
    s.setblocking(False)
    os.set_inheritable(s.fileno(), False)
    return s


class _NoDelayH11(GuardedH11):
    """Responses go out as two writes (head, body); with Nagle on, a keep-alive client's delayed
    ACK holds the body back ~40 ms. Loopback RPC wants every write sent at once."""

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class _Server(uvicorn.Server):
    """We own signal handling (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


def check_install(home: Home, config: Config, override: bool) -> None:
    """Refuse to start from an install that is not the signed release (stockade.release.gate);
    the owner's override for one start is recorded in the audit log before anything serves."""
    g = install_gate.at_start(require_verified=config.install.require_verified, override=override)
    if g.action == "refuse":
        raise StartupFailed(f"install check: {g.message} (`stockade doctor --verify-install` lists every "
                            "finding; `stockade serve --accept-install-mismatch` starts anyway, audited)")
    if g.action in ("warn", "override"):
        log.warning("install check: %s", g.message)
    if g.action == "override":
        append_offline_or_admin(home, {"kind": "install.override", "message": g.message,
                                       "release": g.report.get("release"), "uid": os.getuid(), "pid": os.getpid()})


def build(home: Home, *, port: int | None = None, dashboard_port: int | None = None,
          accept_install_mismatch: bool = False) -> Gateway:
    """Synchronous construction, before the loop: install check, config, db, registry, pipeline, prefork hooks."""
    if admin_running(home):   # said at once, before a zygote is forked for nothing (the audit lock still decides)
        raise StartupFailed(f"another stockade serve is running on {home.root} (its admin socket answers)")
    config = home.config()
    check_install(home, config, accept_install_mismatch)
    if port is not None:
        config.gateway.port = port
    if dashboard_port is not None:
        config.dashboard.port = dashboard_port
    loaded = parts(config)
    probe_ports(config)
    try:
        db = home.db()
    except Exception as e:  # a damaged or unreadable stockade.db: say so and stop
        raise StartupFailed(f"cannot open {home.db_path}: {type(e).__name__}: {e}") from e
    _refuse_damaged(home, db)
    _mount_volume(home)
    registry = load_registry()
    bus = EventBus()
    pipeline = Pipeline(home, registry, db, bus=bus)
    gw = Gateway(home, config, pipeline, bus, rpc_methods=dict(jsonrpc.METHODS))
    for part in loaded:
        gw.admin_commands.register(getattr(part, "ADMIN_COMMANDS", {}), part.__name__)
        _add_methods(gw, getattr(part, "RPC_METHODS", {}), part.__name__)
    for part in loaded:
        if hasattr(part, "prefork"):
            part.prefork(gw)
    return gw


def _mount_volume(home: Home) -> None:
    """The home's volume, before the zygote forks (it must see the binds, not the bare
    directories under them). A home with a volume that does not mount is refused: serving from
    the bare directories would hand agents the files the volume hides, and name the home."""
    if not volume.configured(home):
        log.warning("the home has no volume: mountinfo inside sandboxes names %s "
                    "(stockade volume create SIZE; docs/sandbox.md \"The volume\")", home.root)
        return
    try:
        for line in volume.ensure_mounted(home):
            log.info("volume: %s", line)
    except StockadeError as e:
        raise StartupFailed(f"the home's volume: {e.message}") from None


def probe_ports(config: Config) -> None:
    """A busy port is said before the zygote forks and the parts start (seconds, on a loaded
    machine): bind each configured port once and let it go. `_listen` binds again for real, so a
    port taken in between is still refused there, with the same message."""
    wanted = [("gateway", config.gateway.host, config.gateway.port)]
    if "supervision" not in config.parts.off():
        wanted.append(("dashboard", config.dashboard.host, config.dashboard.port))
    for name, host, port in wanted:
        if port:
            try:
                _bind(host, port).close()
            except OSError as e:
                raise StartupFailed(f"cannot listen on {host}:{port} ({name}): {e.strerror or e}") from e


def _refuse_damaged(home: Home, db: Any) -> None:
    """A damaged page (approvals, packs, agents...) would surface later as a part that hangs or
    a 500 on every call; refuse now, naming the table and the way out."""
    bad = damaged_tables(db)
    if bad:
        raise StartupFailed(
            f"{home.db_path} is damaged (table {', '.join(bad)} fails SQLite's quick_check); refusing to "
            f"serve on it. Stop, keep a copy, then restore stockade.db from a backup or rebuild it: "
            f"`sqlite3 {home.db_path} .recover | sqlite3 {home.db_path}.recovered` and move that in place")


def _add_methods(gw: Gateway, table: dict[str, Any], owner: str) -> None:
    """A part's JSON-RPC methods; one name claimed twice is a wiring bug, refused at start."""
    for name, fn in table.items():
        if name in gw.rpc_methods:
            raise StartupFailed(f"JSON-RPC method {name!r} of {owner} is already registered")
        gw.rpc_methods[name] = fn


def _check_required(gw: Gateway) -> None:
    """The pipeline must not run on its stand-ins for the parts that decide and record."""
    missing = [name for name, hook in (("audit", gw.audit), ("policy", gw.policy)) if hook is None]
    if missing:
        raise StartupFailed(f"part {', '.join(missing)} did not start; refusing to serve without it")


async def _start_parts(gw: Gateway, started: list[ModuleType]) -> None:
    """Start each part in order; one that fails stops `serve` naming it (a bad file the owner
    wrote stays a ConfigError, reported with its file:line, exit 2)."""
    for part in parts(gw.config):
        if hasattr(part, "start"):
            try:
                await part.start(gw)
            except ConfigError:
                raise
            except Exception as e:
                raise StartupFailed(f"part {_part_name(part)} did not start: {e}") from e
        started.append(part)
    _check_required(gw)


def _part_name(part: ModuleType) -> str:
    return part.__name__.split(".")[1]


async def _listen(gw: Gateway, servers: list[_Server], listening: list[asyncio.Task[Any]]) -> None:
    """Bind every listener and return once all of them accept connections."""
    # The transports load here, not at the top: they pull in the mcp SDK (~2 s of imports) that
    # `init`, `doctor`, `service install` and every other command building on this module never use.
    from stockade.gateway import mcp_transport
    from stockade.gateway import server as gateway_server

    cfg = gw.config.gateway
    mcp = mcp_transport.McpTransport(gw.pipeline, cfg.max_body_bytes)
    gw.listeners.insert(0, Listener("gateway", gateway_server.build_app(
        gw.pipeline, max_body=cfg.max_body_bytes, extra_origins=cfg.allowed_origins, methods=gw.rpc_methods,
        mcp=mcp), cfg.host, cfg.port))
    gw.tools_changed = mcp.tools_changed
    for li in gw.listeners:
        try:
            li.sock = _bind(li.host, li.port)
        except OSError as e:  # a busy port, an address this host does not have
            raise StartupFailed(f"cannot listen on {li.host}:{li.port} ({li.name}): {e.strerror or e}") from e
        gw.ports[li.name] = li.sock.getsockname()[1]
        ucfg = uvicorn.Config(li.app, log_level="warning", access_log=False, lifespan="on", http=_NoDelayH11,
                              limit_concurrency=MAX_CONNECTIONS,
                              ssl_certfile=li.ssl_certfile, ssl_keyfile=li.ssl_keyfile,
                              timeout_graceful_shutdown=5, ws_max_size=cfg.max_body_bytes)
        srv = _Server(ucfg)
        servers.append(srv)
        listening.append(asyncio.create_task(srv.serve(sockets=[li.sock]), name=f"listener-{li.name}"))
    while not all(s.started for s in servers):
        for t in listening:
            if t.done():
                exc = t.exception()
                raise StartupFailed(f"{t.get_name()} stopped during start-up: {exc}") from exc
        await asyncio.sleep(0.01)


async def serve(gw: Gateway, on_ready: Callable[[Gateway], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM. A failure before `on_ready` ends it at once (`StartupFailed`)."""
    stopping = gw.stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_stop_signal, stopping, sig)
    db_serving()                 # worker threads wait for a lock held elsewhere at most 2 s (core.db)
    reloader = Reloader.of(gw)   # SIGHUP: policy and stockade.yaml now (systemctl reload)
    loop.add_signal_handler(signal.SIGHUP, lambda: gw.tasks.append(loop.create_task(reloader.reload())))
    started: list[ModuleType] = []
    servers: list[_Server] = []
    listening: list[asyncio.Task[Any]] = []
    ports_written: bytes | None = None
    try:
        await _start_parts(gw, started)
        await _listen(gw, servers, listening)
        ports_written = json.dumps(gw.ports).encode()
        try:
            write_private(gw.home.ports_file, ports_written)
        except OSError as e:
            ports_written = None
            raise StartupFailed(f"cannot write {gw.home.ports_file}: {e}") from e
        if on_ready:
            on_ready(gw)
        sdnotify.ready("serving " + ", ".join(f"{name} {gw.url(name)}" for name in gw.ports))  # Type=notify
        log.info("%s", started_line(gw))
        gw.tasks.append(loop.create_task(_log_health_changes(gw, stopping), name="health-log"))
        await stopping.wait()
    finally:
        sdnotify.stopping()
        log.info("stopping stockade (pid %d)", os.getpid())
        stopping.set()      # part loops (egress reconcile, approvals release) end with it
        for s in servers:
            s.should_exit = True
        if listening:
            await asyncio.gather(*listening, return_exceptions=True)
        if ports_written is not None:
            _remove_if_ours(gw.home.ports_file, ports_written)
        for part in reversed(started):
            if hasattr(part, "stop"):
                try:
                    await part.stop(gw)
                except Exception:  # keep stopping the others; the owner sees why
                    log.exception("stopping %s failed", part.__name__)
        await _cancel(gw.tasks)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped stockade (pid %d)", os.getpid())


def _on_stop_signal(stopping: asyncio.Event, sig: signal.Signals) -> None:
    log.info("received %s: stopping", sig.name)
    stopping.set()


def started_line(gw: Gateway) -> str:
    """The operational log's start line: versions, pid, home and every listen address."""
    import sys

    from stockade import __version__
    addresses = ", ".join(f"{name} {gw.url(name)}" for name in gw.ports)
    unwell = ", ".join(f"{name} {st}" for name, st in _statuses(gw).items() if st != "ok")
    return (f"started stockade {__version__} (python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
            f"pid {os.getpid()}) for {gw.home.root}: {addresses}; health: {unwell or 'every part ok'}")


HEALTH_LOG_SECONDS = 2.0


def health_changes(before: dict[str, str], now: dict[str, str]) -> list[tuple[str, str, str]]:
    """(part, old, new) for every part whose status changed, appeared or went. Pure."""
    return [(name, before.get(name, "none"), now.get(name, "none"))
            for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]


def _statuses(gw: Gateway) -> dict[str, str]:
    return {name: str(h.get("status", "ok")) for name, h in list(gw.pipeline.health.items()) if isinstance(h, dict)}


DB_LOCKED = {"status": "degraded", "detail": "stockade.db is locked by another process: calls that write "
                                            "(sessions, approvals, rate limits, state) are refused as Unavailable"}


def database_health(locked_now: bool, locked_before: bool) -> dict[str, Any]:
    """Degraded once the write lock was found held twice in a row (a single probe can meet
    another writer's millisecond transaction); ok at the first free probe. Pure."""
    return dict(DB_LOCKED) if locked_now and locked_before else {"status": "ok"}


async def _log_health_changes(gw: Gateway, stopping: asyncio.Event) -> None:
    """One log line per part health change (the parts keep `pipeline.health` current; only the
    status is logged, never a part's detail, which may quote what an agent sent). It also keeps
    the `database` entry: whether another process holds stockade.db's write lock."""
    locked = False
    gw.pipeline.health["database"] = {"status": "ok"}
    seen = _statuses(gw)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HEALTH_LOG_SECONDS)
        try:
            now_locked = await asyncio.to_thread(write_lock_held, gw.home.db_path)
        except sqlite3.Error:
            now_locked = False      # a damaged or vanished file is another part's finding
        gw.pipeline.health["database"] = database_health(now_locked, locked)
        locked = now_locked
        now = _statuses(gw)
        for name, old, new in health_changes(seen, now):
            (log.info if new == "ok" else log.warning)("health: %s %s -> %s", name, old, new)
        seen = now


def _remove_if_ours(path: Any, content: bytes) -> None:
    """A run file is removed only by the process that wrote it (never a live server's)."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == content:
            path.unlink()


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Tasks a part left running (its `stop` did not end them, or it never started)."""
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()
