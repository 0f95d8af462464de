"""Approvals as MCP Tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663).

A client that declares the extension (in the request's `_meta` clientCapabilities for stateless
2026-07-28 clients, or at `initialize` for 2025-11-25 sessions) gets a task handle for a call that
waits for the owner instead of a held request and an `ApprovalPending` error. The task IS the
approval: its id is the approval id, its state is read from the approvals store (so it survives
a restart exactly as approvals do, and every transition is the approvals' own audit record), and
it is bound to the agent that asked (`ApprovalService.status` hides other agents' approvals, so
their tasks are "not found", never "forbidden").

    approval  pending | approved | running  ->  task working
              executed                      ->  completed, the real CallToolResult inlined
              failed | rejected | expired   ->  failed, the stockade error as a JSON-RPC error
              expired, withdrawn by the agent ->  cancelled (`tasks/cancel`)

stockade's errors are JSON-RPC errors on its own transport (`/rpc`), so a rejected, expired or
failed call is `failed` with that error (`error.data.type` names it), as issue 19 asks.

The pure part (negotiation, the task views) is unit-tested; `get`, `cancel` and `update` are the
thin async shell the MCP transport registers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_CAPABILITIES_META_KEY, INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY

from stockade.approvals.service import ApprovalService
from stockade.approvals.store import WITHDRAWN_REASON
from stockade.core.errors import StockadeError, err

EXTENSION = "io.modelcontextprotocol/tasks"
# Owners decide in minutes, not milliseconds: a poll every few seconds is plenty.
POLL_INTERVAL_MS = 5000
TASK_ID_MAX = 128
_WORKING = {"pending": "waiting for the owner's approval", "approved": "approved; running",
            "running": "approved; running"}


# -- negotiation (pure) -----------------------------------------------------------------------
def declared(params: Mapping[str, Any] | None, session_extensions: Mapping[str, Any] | None) -> bool:
    """Did the client declare the Tasks extension for this request? Either in this request's
    `_meta` clientCapabilities (2026-07-28, or a per-request opt-in) or at `initialize`
    (`session_extensions`). A malformed declaration is InvalidInput, never a silent "no"."""
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    if meta is not None and not isinstance(meta, Mapping):
        raise err("InvalidInput", "params._meta must be an object")
    caps = meta.get(CLIENT_CAPABILITIES_META_KEY) if meta is not None else None
    if caps is not None:
        if not isinstance(caps, Mapping):
            raise err("InvalidInput", f"params._meta[{CLIENT_CAPABILITIES_META_KEY!r}] must be an object")
        extensions = caps.get("extensions")
        if extensions is not None and not isinstance(extensions, Mapping):
            raise err("InvalidInput", f"params._meta[{CLIENT_CAPABILITIES_META_KEY!r}].extensions must be an object")
        if extensions is not None and EXTENSION in extensions:
            if not isinstance(extensions[EXTENSION], Mapping):
                raise err("InvalidInput", f"the {EXTENSION} extension settings must be an object")
            return True
    return bool(session_extensions) and EXTENSION in (session_extensions or {})


def task_id_of(params: Mapping[str, Any] | None) -> str:
    """`params.taskId`, checked: a non-empty string of bounded length."""
    tid = params.get("taskId") if isinstance(params, Mapping) else None
    if not isinstance(tid, str) or not tid or len(tid) > TASK_ID_MAX:
        raise err("InvalidInput", f"taskId must be a non-empty string of at most {TASK_ID_MAX} characters")
    return tid


# -- task views (pure) ------------------------------------------------------------------------
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tool_result(result: Any) -> dict[str, Any]:
    """The CallToolResult the call would have returned (the MCP transport's success shape)."""
    out: dict[str, Any] = {"content": [{"type": "text", "text": json.dumps(result, ensure_ascii=False)}],
                           "isError": False}
    if isinstance(result, dict):
        out["structuredContent"] = result
    return out


def rpc_error(e: StockadeError) -> dict[str, Any]:
    return {"code": e.code, "message": e.message, "data": e.to_dict()}


def _failure(view: Mapping[str, Any]) -> StockadeError:
    aid = view["approval"]
    status = view["status"]
    if status == "rejected":
        reason = view.get("reason")
        return err("ApprovalRejected", f"the owner rejected this call{': ' + reason if reason else ''}",
                   approval=aid, reason=reason)
    if status == "expired":
        reason = view.get("reason")
        why = f" ({reason})" if reason else ""
        return err("ApprovalExpired", f"the approval expired before the owner decided{why}", approval=aid)
    raw = view.get("error")
    stored: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return err(str(stored.get("type") or "Internal"), str(stored.get("message") or "the call failed"),
               approval=aid)


def task_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """A DetailedTask (what `tasks/get` and `notifications/tasks` carry) from the agent's view of
    its approval (`ApprovalService.status`)."""
    status = view["status"]
    updated = max(float(view.get(k) or 0) for k in ("created", "decided", "finished"))
    task: dict[str, Any] = {"taskId": view["approval"], "createdAt": iso(view["created"]),
                            "lastUpdatedAt": iso(updated), "ttlMs": None, "pollIntervalMs": POLL_INTERVAL_MS}
    if status in _WORKING:
        task.update(status="working", statusMessage=f"{_WORKING[status]} ({view['capability']})")
    elif status == "executed":
        task.update(status="completed", statusMessage="approved and run", result=tool_result(view.get("result")))
    elif status == "expired" and view.get("reason") == WITHDRAWN_REASON:
        task.update(status="cancelled", statusMessage="withdrawn by the agent before the owner decided")
    else:
        e = _failure(view)
        task.update(status="failed", statusMessage=e.message, error=rpc_error(e))
    return task


def created(view: Mapping[str, Any]) -> dict[str, Any]:
    """The CreateTaskResult `tools/call` returns in lieu of a held call (flat, `resultType: task`)."""
    task = {k: v for k, v in task_of(view).items() if k not in ("result", "error")}
    return {"resultType": "task", **task}


# -- errors the MCP side raises ---------------------------------------------------------------
def missing_extension() -> MCPError:
    return MCPError(code=MISSING_REQUIRED_CLIENT_CAPABILITY, message="Missing required client capability",
                    data={"requiredCapabilities": {"extensions": {EXTENSION: {}}}})


def not_found() -> MCPError:
    """The same answer for an unknown id and another agent's task: nothing to learn from it."""
    return MCPError(code=INVALID_PARAMS, message="Failed to retrieve task: Task not found",
                    data={"type": "ApprovalNotFound", "message": "no such task"})


def invalid(e: StockadeError) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=e.message, data=e.to_dict())


# -- the shell --------------------------------------------------------------------------------
def service(approvals: object) -> ApprovalService:
    if not isinstance(approvals, ApprovalService):
        raise MCPError(code=-32603, message="approvals are not running on this gateway")
    return approvals


async def get(approvals: object, agent: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        view = await service(approvals).status(agent, task_id_of(params))
    except StockadeError as e:
        raise not_found() if e.type == "ApprovalNotFound" else invalid(e) from None
    return task_of(view)


async def cancel(approvals: object, agent: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Withdraws the approval request while the owner has not decided; acknowledged either way
    (cancellation is cooperative: a call already approved runs to its end)."""
    try:
        await service(approvals).withdraw(agent, task_id_of(params))
    except StockadeError as e:
        raise not_found() if e.type == "ApprovalNotFound" else invalid(e) from None
    return {}


async def update(approvals: object, agent: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """stockade's tasks never ask the client for input: an update to a known task is acknowledged
    and ignored (the spec's rule for responses to requests that are not outstanding)."""
    responses = params.get("inputResponses") if isinstance(params, Mapping) else None
    if responses is not None and not isinstance(responses, Mapping):
        raise invalid(err("InvalidInput", "inputResponses must be an object"))
    await get(approvals, agent, params)
    return {}
