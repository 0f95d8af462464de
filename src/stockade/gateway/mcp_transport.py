"""MCP transports: Streamable HTTP at `/mcp` (2025-11-25 sessions and the stateless 2026-07-28
revision, both served by the official SDK's session manager) and WebSocket at `/mcp/ws`.

The SDK owns the protocol (handshake, sessions, SSE, version negotiation, `server/discover`);
stockade owns authentication and what a tool call does: every `tools/call` ends in
`Pipeline.invoke`, every `tools/list` in `Pipeline.visible`. Tool names map `filesystem.read`
<-> `filesystem__read`. A client that declared the MCP Tasks extension gets a task handle for a
call that waits for the owner (`gateway.tasks`), and `tasks/get|update|cancel` on its own tasks;
`subscriptions/listen` (live lists, and `notifications/tasks` for its own tasks) is `gateway.listen`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp.shared._context_streams import create_context_streams
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stockade import __version__
from stockade.approvals.service import HOLD_OVERRIDE
from stockade.capabilities.registry import tool_to_capability
from stockade.core.errors import StockadeError, err
from stockade.edge.body import BodyTimeout, ClientGone, read_body, replay
from stockade.edge.bounded import parse_json
from stockade.gateway import listen, tasks
from stockade.gateway.pipeline import Caller, Pipeline, progress_reporter

CALLER_KEY = "stockade.caller"
WS_AUTH_TIMEOUT = 10.0
INSTRUCTIONS = (
    "stockade gives you typed capabilities on the owner's server. Every call is checked by policy, "
    "may wait for the owner's approval, runs in a sandbox, and is audited. Call agent__capabilities "
    "first to see what you may do and at which tier."
)


def _caller_of(ctx: Any) -> Caller:
    req = getattr(ctx, "request", None)
    scope = getattr(req, "scope", None) or {}
    caller = scope.get(CALLER_KEY)
    if caller is None:  # pragma: no cover - the ASGI wrapper always sets it
        raise StockadeError("Unauthenticated", "no authenticated caller for this MCP request")
    headers = getattr(req, "headers", None)
    sid = headers.get("mcp-session-id") if headers is not None else None
    if sid and caller.session != sid:
        caller = Caller(caller.agent, caller.key_hash, sid, caller.transport)
    return caller


class _Server(Server[Any]):
    """Advertises `tools.listChanged`: packs can add and remove tools while clients are connected."""

    def create_initialization_options(self, notification_options: NotificationOptions | None = None,
                                      *args: Any, **kwargs: Any) -> Any:
        return super().create_initialization_options(notification_options or NotificationOptions(tools_changed=True),
                                                     *args, **kwargs)


class _Sessions:
    """Who hears `notifications/tools/list_changed`: open 2025-11-25 and WebSocket sessions (newest
    1,000) and, for stateless 2026-07-28 clients, their `subscriptions/listen` streams."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._by_id: dict[str, Any] = {}
        self.listen_bus = InMemorySubscriptionBus()
        # Acknowledges first, stamps the subscription id on every frame, delivers only the kinds
        # the client asked for (SEP-2575) and the caller's own tasks' `notifications/tasks`
        # (SEP-2663, `gateway.listen`); at most 256 open streams, each with a bounded backlog.
        self.listen = listen.Listen(self.listen_bus, pipeline, _caller_of, max_subscriptions=256,
                                    max_buffered_events=64)

    def note(self, ctx: Any) -> None:
        req = getattr(ctx, "request", None)
        headers = getattr(req, "headers", None) or {}
        caller = (getattr(req, "scope", None) or {}).get(CALLER_KEY)
        sid = headers.get("mcp-session-id") or (caller.session if caller and caller.transport == "mcp-ws" else None)
        if not sid:
            return   # stateless 2026-07-28 requests have no channel to notify
        self._by_id.pop(sid, None)
        self._by_id[sid] = ctx.session
        while len(self._by_id) > 1000:
            self._by_id.pop(next(iter(self._by_id)))

    async def tools_changed(self) -> int:
        sent = 0
        for sid, session in list(self._by_id.items()):
            try:
                await session.send_tool_list_changed()
                sent += 1
            except Exception:
                self._by_id.pop(sid, None)   # gone; forget it
        await self.listen_bus.publish(ToolsListChanged())
        return sent

    async def follow_policy(self, bus: Any) -> None:
        """A policy reload may hide or show capabilities: tell every listener to list again."""
        sub = bus.subscribe()
        try:
            while True:
                ev = await sub.get(timeout=None)
                if ev is not None and ev.kind == "policy.reloaded":
                    await self.tools_changed()
        finally:
            sub.close()


class _TaskParams(types.RequestParams):
    """`tasks/*` params: checked by `gateway.tasks` after the extension gate, not before it."""

    model_config = ConfigDict(**types.RequestParams.model_config, extra="allow")


class _TaskHandle(Exception):  # noqa: N818 - a result carried past the SDK's legacy sieve, not an error
    """A CreateTaskResult for a 2025-11-25 session: the SDK shapes legacy `tools/call` results as
    CallToolResult (dropping the handle), so `_deliver_task_handles` returns it as it is."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("task handle")
        self.result = result


async def _deliver_task_handles(ctx: Any, call_next: Any) -> Any:
    try:
        return await call_next(ctx)
    except _TaskHandle as h:
        return h.result


def _mcp_error(e: StockadeError) -> MCPError:
    return MCPError(code=e.code, message=e.message, data=e.to_dict())


def _session_extensions(ctx: Any) -> Any:
    caps = ctx.session.client_capabilities
    return caps.extensions if caps is not None else None


def _wants_tasks(ctx: Any) -> bool:
    try:
        return tasks.declared(ctx.params, _session_extensions(ctx))
    except StockadeError as e:
        raise tasks.invalid(e) from None


def build_server(pipeline: Pipeline, sessions_: _Sessions | None = None) -> Server[Any]:
    """An SDK low-level server whose handlers are thin adapters onto the pipeline; `sessions_`
    learns who to tell when the tool list changes."""
    if sessions_ is None:
        sessions_ = _Sessions(pipeline)

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        caller = _caller_of(ctx)
        sessions_.note(ctx)
        tools = [
            types.Tool(
                name=d.tool_name,
                title=d.name,
                description=f"{d.purpose}\nWhen to use: {d.when_to_use}",
                input_schema=d.input_schema,
                output_schema=d.output_schema if d.output_schema.get("type") == "object" else None,
                annotations=types.ToolAnnotations(read_only_hint=not d.side_effects),
            )
            for d in pipeline.visible(caller)
        ]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        caller = _caller_of(ctx)
        sessions_.note(ctx)
        want_task = _wants_tasks(ctx)
        token = progress_reporter.set(ctx.session.report_progress)
        # A Tasks client is not held: it gets its handle as soon as the approval is durable.
        hold = HOLD_OVERRIDE.set(0.0 if want_task else None)
        try:
            result = await pipeline.invoke(caller, tool_to_capability(params.name), dict(params.arguments or {}))
        except StockadeError as e:
            if want_task and e.type == "ApprovalPending" and isinstance(e.data.get("approval"), str):
                return await _task_handle(ctx, caller, e.data["approval"])
            body = e.to_dict()
            return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(body))],
                                        is_error=True)
        finally:
            HOLD_OVERRIDE.reset(hold)
            progress_reporter.reset(token)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(result, ensure_ascii=False))],
            structured_content=result,
        )

    async def _task_handle(ctx: Any, caller: Caller, aid: str) -> dict[str, Any]:
        view = await tasks.service(pipeline.approvals).status(caller.agent, aid)
        await pipeline.record_event("task.created", task=aid, approval=aid, agent=caller.agent,
                                    session=caller.session, capability=view["capability"])
        handle = tasks.created(view)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return handle
        raise _TaskHandle(handle)

    def tasks_method(op: Any) -> Any:
        async def handler(ctx: Any, params: Any) -> dict[str, Any]:
            caller = _caller_of(ctx)
            try:
                pipeline._recheck(caller)
            except StockadeError as e:
                raise _mcp_error(e) from None
            if not _wants_tasks(ctx):
                raise tasks.missing_extension()
            return await op(pipeline.approvals, caller.agent, ctx.params)
        return handler

    server = _Server("stockade", version=__version__, instructions=INSTRUCTIONS,
                     on_list_tools=list_tools, on_call_tool=call_tool, on_subscriptions_listen=sessions_.listen)
    server.extensions[tasks.EXTENSION] = {}
    for method, op in (("tasks/get", tasks.get), ("tasks/update", tasks.update), ("tasks/cancel", tasks.cancel)):
        server.add_request_handler(method, _TaskParams, tasks_method(op))
    server.middleware.append(_deliver_task_handles)
    return server


def _unauthorized(message: str) -> bytes:
    return _error_body(StockadeError("Unauthenticated", message))


def _error_body(e: StockadeError) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": e.code, "message": e.message,
                                                               "data": e.to_dict()}}).encode()


async def _respond(send: Any, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class McpHttp:
    """ASGI app for `/mcp`: authenticate, bind the SDK session to the agent, hand over."""

    def __init__(self, pipeline: Pipeline, manager: StreamableHTTPSessionManager, max_body: int):
        self.pipeline = pipeline
        self.manager = manager
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        from stockade.gateway.server import bearer

        auth = headers.get("authorization")
        token = bearer({"authorization": auth} if auth else {})
        client = scope.get("client")
        try:
            caller = await self.pipeline.admit(token, headers.get("mcp-session-id") or "mcp", "mcp-http",
                                               client[0] if client else None)
        except StockadeError as e:
            if e.type == "RateLimited":
                retry = str(max(1, math.ceil(float(e.data.get("retry_after") or 1)))).encode()
                await _respond(send, 429, _error_body(e), ((b"retry-after", retry),))
            else:
                await _respond(send, 401, _unauthorized(e.message),
                               ((b"www-authenticate", b'Bearer realm="stockade"'),))
            return
        body = b""
        if scope.get("method") == "POST":
            # The SDK parses the body again, but only once the edge's bounded parse accepted it.
            try:
                body = await read_body(scope, receive, self.max_body)
                parse_json(body)
            except BodyTimeout:
                await _respond(send, 408, _error_body(err("InvalidInput", "the request body did not arrive in time")))
                return
            except ClientGone:
                return
            except StockadeError as e:
                await self.pipeline.refuse(caller, e, b"" if e.type == "PayloadTooLarge" else body)
                await _respond(send, e.http_status, _error_body(e))
                return
            receive = replay(body, receive)
        scope = dict(scope)
        scope[CALLER_KEY] = caller
        # The SDK binds each session to the credential that opened it (a stolen session id is
        # useless with another agent's key): client_id is the agent plus its key hash.
        principal = f"{caller.agent}:{caller.key_hash.hex()}"
        scope["user"] = AuthenticatedUser(AccessToken(token="-", client_id=principal, scopes=[]))  # noqa: S106
        status = 0

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.manager.handle_request(scope, receive, watched)
        if status >= 400:   # refused by the protocol layer (no session, bad version...): audited too
            await self.pipeline.refuse(caller, err("InvalidInput", f"MCP request refused (HTTP {status})",
                                                   reason="protocol"), body)


class _WsRequest:
    """What SDK handlers see as `ctx.request` on the WebSocket transport."""

    def __init__(self, scope: dict[str, Any]):
        self.scope = scope
        self.headers: dict[str, str] = {}


async def _ws_endpoint(websocket: WebSocket, pipeline: Pipeline, server: Server[Any]) -> None:
    """MCP over WebSocket (KruxOS-style clients): one JSON-RPC message per text frame.

    Auth: `Authorization: Bearer` on the upgrade, or, for clients that cannot set headers, a first
    message `{"type": "auth", "token": "stk_..."}` within 10 s. Never a token in the URL.
    """
    if websocket.query_params:
        await websocket.close(code=1008, reason="query parameters are not accepted (no tokens in URLs)")
        return
    from stockade.gateway import sessions
    from stockade.gateway.server import bearer

    token = bearer(websocket.headers)
    await websocket.accept(subprotocol="mcp" if "mcp" in websocket.scope.get("subprotocols", []) else None)
    if token is None:
        try:
            with anyio.fail_after(WS_AUTH_TIMEOUT):
                first = await websocket.receive_text()
            msg = parse_json(first)
            token = msg.get("token") if isinstance(msg, dict) and msg.get("type") == "auth" else None
        except (TimeoutError, StockadeError, WebSocketDisconnect, KeyError):
            token = None
    try:
        client = websocket.client
        caller = await pipeline.admit(token, "pending", "mcp-ws", client.host if client else None)
    except StockadeError as e:
        throttled = e.type == "RateLimited"
        with contextlib.suppress(Exception):
            await websocket.send_text((_error_body(e) if throttled else _unauthorized(e.message)).decode())
            await websocket.close(code=1013 if throttled else 1008,
                                  reason="too many failed authentications" if throttled else "authentication failed")
        return
    try:
        sid = sessions.create(pipeline.db, caller.agent, "mcp-ws")
    except StockadeError as e:   # Unavailable: stockade.db is locked elsewhere; 1013 = try again later
        with contextlib.suppress(Exception):
            await websocket.send_text(_error_body(e).decode())
            await websocket.close(code=1013, reason="try again later")
        return
    caller = Caller(caller.agent, caller.key_hash, sid, "mcp-ws")
    req = _WsRequest({CALLER_KEY: caller})
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](16)
    write_stream, write_reader = create_context_streams[SessionMessage](16)

    async def reader() -> None:
        try:
            while True:
                text = await websocket.receive_text()
                try:
                    message = types.jsonrpc_message_adapter.validate_python(parse_json(text), by_name=False)
                except Exception as ex:
                    e = ex if isinstance(ex, StockadeError) else err("InvalidInput", "not a JSON-RPC message")
                    await pipeline.refuse(caller, e, text)
                    await websocket.send_text(_error_body(e).decode())
                    continue
                await read_writer.send(SessionMessage(message, metadata=ServerMessageMetadata(request_context=req)))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            read_writer.close()

    async def writer() -> None:
        async for msg in write_reader:
            await websocket.send_text(msg.message.model_dump_json(by_alias=True, exclude_unset=True))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            await server.run(read_stream, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            sessions.end(pipeline.db, caller.agent, sid)
        with contextlib.suppress(Exception):
            await websocket.close()


class McpTransport:
    """One gateway's MCP side, made by the app that serves it (no module-level state): the SDK
    server, its Streamable HTTP session manager (which runs once, inside the app's lifespan) and
    the sessions that hear `tools/list_changed` (`tools_changed`, which the wiring calls)."""

    def __init__(self, pipeline: Pipeline, max_body: int) -> None:
        self.pipeline = pipeline
        self.max_body = max_body
        self.sessions = _Sessions(pipeline)
        self.server = build_server(pipeline, self.sessions)
        self.manager = StreamableHTTPSessionManager(app=self.server, json_response=False, stateless=False,
                                                    security_settings=None, max_request_body_size=max_body)
        self.tools_changed = self.sessions.tools_changed

    def routes(self) -> list[Any]:
        app = McpHttp(self.pipeline, self.manager, self.max_body)

        async def ws(websocket: WebSocket) -> None:
            await _ws_endpoint(websocket, self.pipeline, self.server)

        return [Route("/mcp", app, methods=["GET", "POST", "DELETE"]), WebSocketRoute("/mcp/ws", ws)]

    def lifespan(self) -> Any:
        @contextlib.asynccontextmanager
        async def _lifespan(app: Any) -> AsyncIterator[None]:
            async with self.manager.run(), anyio.create_task_group() as tg:
                tg.start_soon(self.sessions.follow_policy, self.pipeline.bus)
                tg.start_soon(listen.follow_tasks, self.pipeline.bus, self.sessions.listen_bus)
                try:
                    yield
                finally:
                    self.sessions.listen.close()
                    tg.cancel_scope.cancel()

        return _lifespan
