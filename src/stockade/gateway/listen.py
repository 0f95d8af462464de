"""`subscriptions/listen` (2026-07-28): live lists (SEP-2575) and task status pushes (SEP-2663).

The SDK's `ListenHandler` serves the list kinds but drops what it does not know from the filter,
so a client asking for `notifications.taskIds` would get an ack without them and never a
`notifications/tasks` frame. This handler keeps the SDK's contract (acknowledged first, every frame
stamped with the listen request's id under `_meta["io.modelcontextprotocol/subscriptionId"]`, only
the kinds asked for, a bounded backlog, at most N streams) and adds the Tasks extension's part:

- `taskIds` needs the extension declared on the listen request (or at initialize): -32021 without
  it, as the extension says; a malformed list is -32602 and opens nothing.
- Only the caller's own tasks are honoured: another agent's id is left out of the ack exactly like
  an unknown one (nothing to learn from it). The ack lists the ids it honours.
- Right after the ack each honoured task's current state is sent once (a task may have finished
  between `tools/call` and the listen), then a frame whenever it changes: `params` is the same
  DetailedTask `tasks/get` would return at that moment, so a client need not poll. A task that
  reached a terminal state is not followed any further.
- Changes come from the approvals' own announcements on the gateway's event bus
  (`follow_tasks`), so every pushed transition is one the approvals store recorded and audited.
  Each frame re-checks the key: a revoked agent's stream ends.
- One agent holds at most MAX_STREAMS_PER_AGENT open streams (`RateLimited` beyond), so one key
  cannot take every slot of the gateway-wide cap from the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.streams.memory
from mcp.server.subscriptions import SUBSCRIPTION_ID_META_KEY, InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import event_matches, event_to_notification
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
)

from stockade.core.errors import StockadeError, err
from stockade.gateway import tasks

log = logging.getLogger(__name__)
TASK_METHOD = "notifications/tasks"
MAX_TASK_IDS = 256
# Open streams one agent may hold: the gateway-wide cap is shared, and one key filling it would
# leave every other agent without live lists.
MAX_STREAMS_PER_AGENT = 16
TERMINAL = frozenset({"completed", "failed", "cancelled"})
# The approvals' announcements that can change what `tasks/get` says (grants carry no approval).
TASK_EVENTS = frozenset({"approval.decided", "approval.expired", "approval.executed"})


@dataclass(frozen=True)
class TaskChanged:
    """An approval (= task) of `agent` changed: streams following it read its state again."""

    agent: str
    task_id: str


# -- pure -------------------------------------------------------------------------------------
def requested_task_ids(notifications: SubscriptionFilter) -> list[str] | None:
    """`notifications.taskIds`, checked: None when absent, else distinct task ids (order kept)."""
    raw = (notifications.model_extra or {}).get("taskIds")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TASK_IDS:
        raise err("InvalidInput", f"notifications.taskIds must be a list of at most {MAX_TASK_IDS} task ids")
    for tid in raw:
        tasks.task_id_of({"taskId": tid})
    return list(dict.fromkeys(raw))


def honoured_filter(requested: SubscriptionFilter, task_ids: list[str]) -> SubscriptionFilter:
    """What the ack echoes: the list kinds asked for (falsy ones dropped, as the SDK does) and
    the task ids this stream will follow, if any."""
    extra: dict[str, Any] = {"taskIds": task_ids} if task_ids else {}
    return SubscriptionFilter(
        tools_list_changed=True if requested.tools_list_changed else None,
        prompts_list_changed=True if requested.prompts_list_changed else None,
        resources_list_changed=True if requested.resources_list_changed else None,
        resource_subscriptions=list(requested.resource_subscriptions) if requested.resource_subscriptions else None,
        **extra,
    )


@dataclass(frozen=True)
class _TaskNotification:
    """`notifications/tasks` as the SDK session sends it. Not a pydantic model: the session dumps
    notifications with `exclude_none`, which would drop `ttlMs: null`, a required Task field."""

    params: dict[str, Any]

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return {"method": TASK_METHOD, "params": self.params}


def task_frame(task: Mapping[str, Any], meta: Mapping[str, Any]) -> _TaskNotification:
    return _TaskNotification({**task, "_meta": dict(meta)})


# -- the shell --------------------------------------------------------------------------------
async def follow_tasks(bus: Any, listen_bus: InMemorySubscriptionBus) -> None:
    """Turns the approvals' announcements (core event bus) into `TaskChanged` for listen streams."""
    sub = bus.subscribe()
    try:
        while True:
            ev = await sub.get(timeout=None)
            if ev is None or ev.kind not in TASK_EVENTS:
                continue
            aid, agent = ev.data.get("approval"), ev.data.get("agent")
            if isinstance(aid, str) and isinstance(agent, str):
                await listen_bus.publish(TaskChanged(agent, aid))  # type: ignore[arg-type]
    finally:
        sub.close()


class Listen:
    """Serves `subscriptions/listen`; one call is one stream (see the module docstring).

    `who(ctx)` is the authenticated caller, `pipeline` the gateway's (approvals, key re-check)."""

    def __init__(self, bus: InMemorySubscriptionBus, pipeline: Any, who: Callable[[Any], Any], *,
                 max_subscriptions: int, max_buffered_events: int) -> None:
        self._bus = bus
        self._pipeline = pipeline
        self._who = who
        self._max_subscriptions = max_subscriptions
        self._max_buffered = max_buffered_events
        self._streams: set[anyio.streams.memory.MemoryObjectSendStream[Any]] = set()
        self._per_agent: dict[str, int] = {}

    async def _own_tasks(self, ctx: Any, agent: str, ids: list[str] | None,
                         session_extensions: Any) -> dict[str, dict[str, Any]]:
        """The requested tasks that are the caller's, with their current state."""
        if ids is None:
            return {}
        try:
            declared = tasks.declared(ctx.params, session_extensions)
        except StockadeError as e:
            raise tasks.invalid(e) from None
        if not declared:
            raise tasks.missing_extension()
        approvals = self._pipeline.approvals
        out: dict[str, dict[str, Any]] = {}
        for tid in ids:
            try:
                out[tid] = tasks.task_of(await tasks.service(approvals).status(agent, tid))
            except StockadeError:
                continue   # unknown or another agent's: not honoured, and not told apart
        return out

    async def _current(self, agent: str, tid: str) -> dict[str, Any] | None:
        try:
            return tasks.task_of(await tasks.service(self._pipeline.approvals).status(agent, tid))
        except (StockadeError, MCPError):
            return None

    def _admit(self, agent: str) -> None:
        """Room for one more stream, gateway-wide and for this agent? (Called with no await
        between it and the stream's registration, so concurrent listens cannot overshoot.)"""
        if len(self._streams) >= self._max_subscriptions:
            raise MCPError(INTERNAL_ERROR, "Subscription limit reached")
        if self._per_agent.get(agent, 0) >= MAX_STREAMS_PER_AGENT:
            full = err("RateLimited", f"at most {MAX_STREAMS_PER_AGENT} open subscriptions/listen streams per agent",
                       [{"action": "close_stream", "description": "End a stream you no longer read, then retry."}],
                       rule="listen-streams", limit=MAX_STREAMS_PER_AGENT)
            raise MCPError(code=full.code, message=full.message, data=full.to_dict())

    async def __call__(self, ctx: Any, params: SubscriptionsListenRequestParams) -> SubscriptionsListenResult:
        sid = ctx.request_id
        if sid is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        caller = self._who(ctx)
        try:
            ids = requested_task_ids(params.notifications)
        except StockadeError as e:
            raise tasks.invalid(e) from None
        caps = ctx.session.client_capabilities
        followed = await self._own_tasks(ctx, caller.agent, ids, caps.extensions if caps is not None else None)
        self._admit(caller.agent)
        honoured = honoured_filter(params.notifications, list(followed))
        uris = frozenset(honoured.resource_subscriptions or ())
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: sid}
        send, recv = anyio.create_memory_object_stream[Any](self._max_buffered)

        def deliver(event: Any) -> None:
            if isinstance(event, TaskChanged):
                wanted = event.agent == caller.agent and event.task_id in followed
            else:
                wanted = event_matches(honoured, uris, event)
            if not wanted:
                return
            try:
                send.send_nowait(event)
            except anyio.ClosedResourceError:
                pass
            except anyio.WouldBlock:   # a client that stopped reading: end its stream, free the slot
                log.warning("listen stream %r backlog full; ending the stream", sid)
                self._streams.discard(send)
                send.close()

        unsubscribe = self._bus.subscribe(deliver)   # before the ack: nothing published meanwhile is lost
        self._streams.add(send)
        self._per_agent[caller.agent] = self._per_agent.get(caller.agent, 0) + 1
        try:
            await ctx.session.send_notification(SubscriptionsAcknowledgedNotification(
                params=SubscriptionsAcknowledgedNotificationParams(notifications=honoured, _meta=meta)),
                related_request_id=sid)
            for tid, seen in list(followed.items()):
                # Read again: a change between the ownership check and the subscription above
                # was announced to nobody, and this snapshot must not be older than it.
                await self._push(ctx, followed, await self._current(caller.agent, tid) or seen, meta)
            async for event in recv:
                try:
                    self._pipeline._recheck(caller)
                except StockadeError:
                    break   # the key was revoked: this stream ends with it, whatever the frame
                if not isinstance(event, TaskChanged):
                    await ctx.session.send_notification(event_to_notification(event, meta), related_request_id=sid)
                    continue
                now = await self._current(caller.agent, event.task_id)
                if now is not None and event.task_id in followed and now != followed[event.task_id]:
                    await self._push(ctx, followed, now, meta)
        finally:
            unsubscribe()
            self._streams.discard(send)
            left = self._per_agent.pop(caller.agent, 1) - 1
            if left > 0:
                self._per_agent[caller.agent] = left
            send.close()
            recv.close()
        return SubscriptionsListenResult(_meta=meta)

    @staticmethod
    async def _push(ctx: Any, followed: dict[str, dict[str, Any]], task: dict[str, Any], meta: dict[str, Any]) -> None:
        """Send one task's state; a terminal one is not followed any further."""
        tid = task["taskId"]
        followed[tid] = task
        if task["status"] in TERMINAL:
            del followed[tid]
        await ctx.session.send_notification(task_frame(task, meta), related_request_id=meta[SUBSCRIPTION_ID_META_KEY])

    def close(self) -> None:
        """Ends every open stream gracefully (each sends its final result from its own task)."""
        for stream in list(self._streams):
            stream.close()
