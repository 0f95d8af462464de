"""`stockade status`: what the running gateway says about itself, over the admin socket.

One admin command (`status`) gathers it in the gateway: pid, uptime, listen addresses, each part's
health as the parts report it (`pipeline.health`, the same source as `system.health` and the
dashboard), the vault, pending approvals, the audit head and last checkpoint, the sandbox. The
overall verdict is pure (`overall`) so the CLI and the tests agree on what "degraded" means.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stockade import __version__
from stockade.core.wiring import Gateway

SANDBOX_KEYS = ("status", "zygote_pid", "zygote_restarts", "zygote_stalls", "kills", "problems", "pool")


def overall(health: dict[str, Any]) -> str:
    """ok when every part says ok; critical if any says critical; degraded otherwise. Pure."""
    statuses = {v.get("status", "ok") for v in health.values() if isinstance(v, dict)}
    if "critical" in statuses:
        return "critical"
    return "ok" if statuses <= {"ok"} else "degraded"


def pending_approvals(gw: Gateway) -> int | None:
    try:
        row = gw.pipeline.db.execute("SELECT count(*) FROM approvals WHERE status='pending'").fetchone()
    except Exception:  # noqa: BLE001 - approvals switched off: no table, nothing pending
        return None
    return int(row[0])


def audit_head(gw: Gateway) -> dict[str, Any] | None:
    if gw.audit is None:
        return None
    st = gw.audit.status()
    return {"seq": st.get("seq"), "file": st.get("file"), "failed": st.get("failed"),
            "disk_full": st.get("disk_full"), "last_checkpoint_seq": st.get("last_checkpoint")}


def gather(gw: Gateway) -> dict[str, Any]:
    health = {k: v for k, v in gw.pipeline.health.items() if isinstance(v, dict)}
    vault = health.get("vault")
    sandbox = health.get("sandbox")
    return {
        "running": True,
        "version": __version__,
        "pid": os.getpid(),
        "started": gw.pipeline.started,
        "uptime_seconds": round(time.time() - gw.pipeline.started, 1),
        "home": str(gw.home.root),
        "addresses": {name: gw.url(name) for name in gw.ports},
        "status": overall(health),
        "parts": {name: h.get("status", "ok") for name, h in sorted(health.items())},
        "health": health,
        "vault": {"sealed": vault.get("sealed"), "initialized": vault.get("initialized")} if vault else None,
        "pending_approvals": pending_approvals(gw),
        "audit": audit_head(gw),
        "sandbox": {k: sandbox[k] for k in SANDBOX_KEYS if k in sandbox} if sandbox else None,
    }


async def command(gw: Gateway, args: dict[str, Any]) -> Any:
    if gw.sandbox is not None and gw.sandbox.pool:
        await gw.sandbox.pool_stats()     # the pool as it is now, not as the last call left it
    return gather(gw)
