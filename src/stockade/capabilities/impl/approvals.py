"""agent.approval: the agent fetches the outcome of its own approval (MCP and JSON-RPC alike)."""

from __future__ import annotations

from typing import Any

from stockade.capabilities.registry import implements


@implements("agent.approval")
async def agent_approval(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    from stockade.approvals.rpc import service_of

    return await service_of(ctx.pipeline).status(ctx.caller.agent, args["approval"], args.get("wait", 0))
