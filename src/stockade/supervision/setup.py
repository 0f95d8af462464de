"""Supervision wiring: the admin socket, the dashboard listener (HTTPS), webhooks, `watch`.

`stockade init` creates the dashboard's self-signed certificate (keys/tls.crt, keys/tls.key) and
an admin token (print a fresh one with `stockade admin token`).
"""

from __future__ import annotations

import time
from typing import Any

from stockade.approvals import store as _approvals_store  # noqa: F401  (its tables, for agents.status)
from stockade.core import agents
from stockade.core.admin import AdminCommand
from stockade.core.home import Home
from stockade.core.wiring import Gateway, Listener
from stockade.supervision import status, tls, tokens
from stockade.supervision.admin import AdminServer
from stockade.supervision.dashboard.app import build_app
from stockade.supervision.webhook import WebhookSender

HEARTBEAT = 15.0


def init(home: Home, policy_template: str) -> list[str]:
    created = tls.ensure(home)
    conn = home.db()
    try:
        if tokens.current_hash(conn) is None:
            tokens.issue(conn)   # print a usable one with `stockade admin token`
            created.append("admin token (print a fresh one: stockade admin token)")
    finally:
        conn.close()
    return created


async def start(gw: Gateway) -> None:
    srv = AdminServer(gw)
    await srv.start()
    gw.admin = srv
    tls.ensure(gw.home)
    crt, key = tls.paths(gw.home)
    cfg = gw.config.dashboard
    gw.listeners.append(Listener("dashboard", build_app(gw), cfg.host, cfg.port,
                                 ssl_certfile=str(crt), ssl_keyfile=str(key)))
    if gw.dashboard is not None:
        gw.dashboard.metrics.start()     # /metrics: fed by the pipeline's observers and the bus
    if gw.config.webhook:
        wh = WebhookSender(gw.bus, gw.config.webhook)
        wh.start()
        gw.webhook = wh


async def stop(gw: Gateway) -> None:
    if gw.webhook is not None:
        await gw.webhook.stop()
    if gw.admin is not None:
        await gw.admin.stop()


def doctor(home: Home) -> dict[str, Any]:
    crt, key = tls.paths(home)
    if not (crt.exists() and key.exists()):
        return {"dashboard_tls": {"status": "degraded", "error": "no keys/tls.crt + keys/tls.key (stockade init)"}}
    return {"dashboard_tls": {"status": "ok", "cert": str(crt)}}


async def _ping(gw: Gateway, args: dict[str, Any]) -> Any:
    return {"pong": True, "ports": gw.ports}


async def _watch(gw: Gateway, args: dict[str, Any], emit: Any) -> None:
    """Live events for `stockade watch` until the client leaves or the gateway stops."""
    history = args.get("history", 20)
    if not isinstance(history, int) or history < 0:
        history = 20
    sub = gw.bus.subscribe()
    try:
        seen = 0
        for past in list(gw.bus.history)[-history:] if history else []:
            await emit(past.to_dict())
            seen = past.id
        last = time.monotonic()
        while not (gw.stopping is not None and gw.stopping.is_set()):
            ev = await sub.get(timeout=1.0)
            if ev is None:
                if time.monotonic() - last >= HEARTBEAT:
                    await emit({"kind": "heartbeat", "ts": time.time()})   # notices a gone client
                    last = time.monotonic()
                continue
            if ev.id > seen:
                await emit(ev.to_dict())
                last = time.monotonic()
    finally:
        sub.close()


async def _agents_status(gw: Gateway, args: dict[str, Any]) -> Any:
    db = gw.pipeline.db
    last: dict[str, float] = {}
    for ev in gw.bus.history:
        a = ev.data.get("agent") if isinstance(ev.data, dict) else None
        if isinstance(a, str):
            last[a] = ev.ts
    out = []
    for a in agents.list_all(db):
        pending = db.execute("SELECT count(*) FROM approvals WHERE agent=? AND status='pending'",
                             (a.name,)).fetchone()[0]
        grants = db.execute("SELECT count(*) FROM approval_grants WHERE agent=? AND revoked_at IS NULL "
                            "AND expires_at>?", (a.name, time.time())).fetchone()[0]
        sessions = db.execute("SELECT count(*) FROM sessions WHERE agent=? AND ended_at IS NULL",
                              (a.name,)).fetchone()[0]
        out.append({"name": a.name, "status": "active" if a.active else "revoked", "created": a.created_at,
                    "pending_approvals": pending, "live_grants": grants, "open_sessions": sessions,
                    "last_event": last.get(a.name)})
    return {"agents": out, "server": "running"}



ADMIN_COMMANDS = {"ping": AdminCommand(_ping), "watch": AdminCommand(_watch, stream=True),
                  "agents.status": AdminCommand(_agents_status), "status": AdminCommand(status.command)}
