"""Supervision wiring: the admin socket (more comes with the dashboard)."""

from __future__ import annotations

from typing import Any

from stockade.supervision.admin import AdminServer, admin_command


async def start(gw: Any) -> None:
    srv = AdminServer(gw)
    await srv.start()
    gw.state["admin"] = srv


async def stop(gw: Any) -> None:
    srv = gw.state.get("admin")
    if srv:
        await srv.stop()


@admin_command("ping")
async def _ping(gw: Any, args: dict[str, Any]) -> Any:
    return {"pong": True, "ports": gw.ports}
