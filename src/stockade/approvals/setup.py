"""Wire approvals into `stockade serve`: the pipeline hook, JSON-RPC method, admin commands.

`RPC_METHODS` (from `approvals.rpc`) and `ADMIN_COMMANDS` are registered by the gateway wiring.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stockade.approvals.rpc import RPC_METHODS
from stockade.approvals.service import ApprovalService
from stockade.core.admin import ADMIN_PEER, AdminCommand
from stockade.core.errors import err
from stockade.core.wiring import Gateway

__all__ = ["ADMIN_COMMANDS", "RPC_METHODS", "service", "start", "stop"]


async def start(gw: Gateway) -> None:
    cfg = gw.config.approvals
    svc = ApprovalService(gw.pipeline, ttl=cfg.ttl, hold_seconds=cfg.hold_seconds)
    gw.pipeline.approvals = svc
    gw.approvals = svc
    await svc.start()
    stopping = gw.stopping
    if stopping is not None:
        async def release() -> None:
            await stopping.wait()
            svc.release_all()
        gw.approvals_release = asyncio.create_task(release(), name="approvals-release")
    gw.pipeline.health["approvals"] = {"status": "ok", "hold_seconds": cfg.hold_seconds, "ttl": cfg.ttl}


async def stop(gw: Gateway) -> None:
    t, gw.approvals_release = gw.approvals_release, None
    if t is not None:
        t.cancel()
    if gw.approvals is not None:
        await gw.approvals.stop()


def service(gw: Gateway) -> ApprovalService:
    svc = gw.approvals
    if svc is None:
        raise err("Internal", "approvals are not running")
    return svc


def _by(args: dict[str, Any]) -> dict[str, Any]:
    """Who decides: the admin socket's peer (uid, pid, command), never what the client claims."""
    return ADMIN_PEER.get() or {"via": "admin-socket"}


def _str(args: dict[str, Any], name: str) -> str:
    v = args.get(name)
    if not isinstance(v, str) or not v:
        raise err("InvalidInput", f"{name} must be a non-empty string")
    return v


async def _list(gw: Gateway, args: dict[str, Any]) -> Any:
    status = args.get("status")
    if status in (None, "all"):
        status = None
    elif not isinstance(status, str):
        raise err("InvalidInput", "status must be a string")
    limit = args.get("limit", 200)
    if not isinstance(limit, int) or not 0 < limit <= 10_000:
        raise err("InvalidInput", "limit must be 1..10000")
    return {"approvals": service(gw).list(status, limit), "grants": service(gw).grants()}


async def _show(gw: Gateway, args: dict[str, Any]) -> Any:
    return service(gw).show(_str(args, "id"))


async def _approve(gw: Gateway, args: dict[str, Any]) -> Any:
    return await service(gw).decide(_str(args, "id"), "approve", by=_by(args))


async def _reject(gw: Gateway, args: dict[str, Any]) -> Any:
    reason = args.get("reason")
    return await service(gw).decide(_str(args, "id"), "reject", by=_by(args), reason=reason)


async def _grant(gw: Gateway, args: dict[str, Any]) -> Any:
    """Either {id, minutes}: approve that call and grant its capability; or {agent, capability, minutes}."""
    svc = service(gw)
    minutes = args.get("minutes")
    reason = args.get("reason")
    if args.get("id"):
        a = svc.show(_str(args, "id"))
        if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes <= 0:
            raise err("InvalidInput", "minutes must be a positive number")
        decided = await svc.decide(a["approval"], "approve", by=_by(args)) if a["status"] == "pending" else a
        g = await svc.grant(a["agent"], a["capability"], minutes, by=_by(args), reason=reason, approval=a["approval"])
        return {"grant": g, "approval": decided}
    return {"grant": await svc.grant(_str(args, "agent"), _str(args, "capability"), minutes,  # type: ignore[arg-type]
                                     by=_by(args), reason=reason)}   # (grant checks minutes itself)


async def _revoke_grant(gw: Gateway, args: dict[str, Any]) -> Any:
    return await service(gw).revoke_grant(_str(args, "id"), by=_by(args))


async def _revoke_agent(gw: Gateway, args: dict[str, Any]) -> Any:
    """`stockade agent revoke` on a running gateway: key, approvals and grants end together."""
    return await service(gw).revoke_agent(_str(args, "name"), by=_by(args))


ADMIN_COMMANDS = {
    "agents.revoke": AdminCommand(_revoke_agent),
    "approvals.list": AdminCommand(_list),
    "approvals.show": AdminCommand(_show),
    "approvals.approve": AdminCommand(_approve),
    "approvals.reject": AdminCommand(_reject),
    "approvals.grant": AdminCommand(_grant),
    "approvals.revoke_grant": AdminCommand(_revoke_grant),
}
