"""agent.approval: the agent fetches the outcome of its own approval (MCP and JSON-RPC alike)."""

from __future__ import annotations

from typing import Any

from stockade.capabilities.registry import implements
from stockade.core.hooks import approval_outcomes


@implements("agent.approval")
async def agent_approval(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    # ctx is the gateway's CallContext; its pipeline's approvals hook keeps the outcomes.
    return await approval_outcomes(ctx.pipeline.approvals).status(ctx.caller.agent, args["approval"],
                                                                   args.get("wait", 0))
