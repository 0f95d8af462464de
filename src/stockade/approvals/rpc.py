"""`approvals.status` on JSON-RPC: an agent fetches the outcome of its own approval.

The method is listed in `RPC_METHODS`; the gateway wiring adds it to the JSON-RPC dispatcher
(approvals sit below the gateway and never import it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from stockade.core.errors import err
from stockade.core.hooks import approval_outcomes


async def _status(ctx: Any, params: dict[str, Any]) -> Any:
    """`ctx` is the gateway's JSON-RPC context (the caller and the pipeline)."""
    extra = set(params) - {"approval", "wait"}
    if extra:
        raise err("InvalidInput", f"unknown params {sorted(extra)}")
    ctx.pipeline._recheck(ctx.caller)
    return await approval_outcomes(ctx.pipeline.approvals).status(ctx.caller.agent, params.get("approval"),
                                                                   params.get("wait", 0))


RPC_METHODS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Any]]] = {"approvals.status": _status}
