"""`approvals.status` on JSON-RPC: an agent fetches the outcome of its own approval."""

from __future__ import annotations

from typing import Any

from stockade.core.errors import err
from stockade.gateway.jsonrpc import method


def service_of(pipeline: Any) -> Any:
    svc = pipeline.approvals
    if not hasattr(svc, "status"):
        raise err("Internal", "approvals are not running on this gateway")
    return svc


@method("approvals.status")
async def _status(ctx: Any, params: dict[str, Any]) -> Any:
    extra = set(params) - {"approval", "wait"}
    if extra:
        raise err("InvalidInput", f"unknown params {sorted(extra)}")
    ctx.pipeline._recheck(ctx.caller)
    return await service_of(ctx.pipeline).status(ctx.caller.agent, params.get("approval"), params.get("wait", 0))
