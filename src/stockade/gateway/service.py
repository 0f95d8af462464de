"""`stockade serve`: wire the parts around the pipeline and run the listeners.

Order matters. `prefork` hooks (the sandbox zygote) run first, in a single-threaded process,
before the event loop, any thread or the vault exists. Then each part's `start(gw)` plugs its
hook into the pipeline (audit before anything can call), the listeners bind, and
`run/ports.json` is written once they accept connections. Shutdown runs `stop` in reverse.

A part plugs in by providing `stockade/<part>/setup.py` with any of `prefork(gw)`,
`async start(gw)`, `async stop(gw)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from stockade.capabilities.registry import load_registry
from stockade.core.config import Config
from stockade.core.events import EventBus
from stockade.core.home import Home, write_private
from stockade.gateway import server as gateway_server
from stockade.gateway.pipeline import Pipeline

PARTS = ("sandbox", "audit", "policy", "egress", "vault", "approvals", "supervision", "packs",
         "perimeter")  # perimeter: doctor checks only (its daemon is `stockade perimeter serve`)


@dataclass
class Listener:
    name: str               # "gateway" | "dashboard"
    app: Any
    host: str
    port: int
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sock: socket.socket | None = None


@dataclass
class Gateway:
    home: Home
    config: Config
    pipeline: Pipeline
    bus: EventBus
    listeners: list[Listener] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)   # parts keep their objects here
    stopping: asyncio.Event | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def url(self, name: str) -> str:
        scheme = "https" if any(li.name == name and li.ssl_certfile for li in self.listeners) else "http"
        return f"{scheme}://127.0.0.1:{self.ports[name]}"


def _parts() -> list[ModuleType]:
    out = []
    for part in PARTS:
        name = f"stockade.{part}.setup"
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    return out


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(512)
    s.setblocking(False)
    os.set_inheritable(s.fileno(), False)
    return s


class _NoDelayH11(H11Protocol):
    """Responses go out as two writes (head, body); with Nagle on, a keep-alive client's delayed
    ACK holds the body back ~40 ms. Loopback RPC wants every write sent at once."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class _Server(uvicorn.Server):
    """We own signal handling (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


def build(home: Home, *, port: int | None = None, dashboard_port: int | None = None) -> Gateway:
    """Synchronous construction, before the loop: config, db, registry, pipeline, prefork hooks."""
    config = home.config()
    if port is not None:
        config.gateway.port = port
    if dashboard_port is not None:
        config.dashboard.port = dashboard_port
    db = home.db()
    registry = load_registry()
    bus = EventBus()
    pipeline = Pipeline(home, registry, db, bus=bus)
    gw = Gateway(home, config, pipeline, bus)
    for part in _parts():
        if hasattr(part, "prefork"):
            part.prefork(gw)
    return gw


async def serve(gw: Gateway, on_ready: Callable[[Gateway], None] | None = None) -> None:
    gw.stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gw.stopping.set)
    started: list[ModuleType] = []
    servers: list[_Server] = []
    try:
        for part in _parts():
            if hasattr(part, "start"):
                await part.start(gw)
            started.append(part)
        cfg = gw.config.gateway
        gw.listeners.insert(0, Listener("gateway", gateway_server.build_app(
            gw.pipeline, max_body=cfg.max_body_bytes, extra_origins=cfg.allowed_origins), cfg.host, cfg.port))
        from stockade.gateway import mcp_transport

        gw.state["tools_changed"] = mcp_transport.SESSIONS[id(gw.pipeline)].tools_changed
        for li in gw.listeners:
            li.sock = _bind(li.host, li.port)
            gw.ports[li.name] = li.sock.getsockname()[1]
            ucfg = uvicorn.Config(li.app, log_level="warning", access_log=False, lifespan="on", http=_NoDelayH11,
                                  ssl_certfile=li.ssl_certfile, ssl_keyfile=li.ssl_keyfile,
                                  timeout_graceful_shutdown=5, ws_max_size=gw.config.gateway.max_body_bytes)
            srv = _Server(ucfg)
            servers.append(srv)
            gw.tasks.append(asyncio.create_task(srv.serve(sockets=[li.sock]), name=f"listener-{li.name}"))
        while not all(s.started for s in servers):
            if any(t.done() for t in gw.tasks):
                for t in gw.tasks:
                    if t.done() and t.exception():
                        raise t.exception()  # type: ignore[misc]
                raise RuntimeError("a listener stopped during start-up")
            await asyncio.sleep(0.01)
        write_private(gw.home.ports_file, json.dumps(gw.ports))
        if on_ready:
            on_ready(gw)
        await gw.stopping.wait()
    finally:
        for s in servers:
            s.should_exit = True
        if gw.tasks:
            await asyncio.gather(*gw.tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            gw.home.ports_file.unlink()
        for part in reversed(started):
            if hasattr(part, "stop"):
                try:
                    await part.stop(gw)
                except Exception as e:  # keep stopping the others; the owner sees why
                    print(f"stockade: stopping {part.__name__}: {e}", file=sys.stderr)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
