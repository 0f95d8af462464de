"""The agent-facing ASGI app on 127.0.0.1:7700: `/rpc`, `/mcp`, `/mcp/ws`, `/healthz`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from stockade.core.errors import AUTH_FAILED, INVALID_REQUEST, StockadeError
from stockade.edge.authlimit import AuthFailures
from stockade.edge.body import BodyTimeout, ClientGone, read_body
from stockade.edge.security import GuardMiddleware
from stockade.gateway import jsonrpc, sessions
from stockade.gateway.pipeline import Caller, Pipeline, log


def bearer(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


@dataclass
class RpcContext:
    pipeline: Pipeline
    caller: Caller

    def create_session(self) -> str:
        return sessions.create(self.pipeline.db, self.caller.agent, "jsonrpc")

    def end_session(self, sid: str) -> None:
        sessions.end(self.pipeline.db, self.caller.agent, sid)

    def session_caller(self, sid: str) -> Caller:
        sessions.check(self.pipeline.db, self.caller.agent, sid)
        return Caller(self.caller.agent, self.caller.key_hash, sid, self.caller.transport)


def _rpc_error(status: int, code: int, etype: str, message: str) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
        "code": code, "message": message, "data": {"type": etype, "message": message,
                                                   "recovery": StockadeError(etype, message).recovery}}},
        status_code=status)


def throttled_response(e: StockadeError) -> JSONResponse:
    """429 for a source throttled after failed authentications, 503 when stockade.db is locked
    elsewhere (structured, with Retry-After)."""
    retry = max(1, math.ceil(float(e.data.get("retry_after") or 1)))
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": e.code, "message": e.message,
                                                                 "data": e.to_dict()}},
                        status_code=e.http_status, headers={"retry-after": str(retry)})


def build_app(pipeline: Pipeline, *, max_body: int = 4 << 20, extra_origins: list[str] | None = None,
              methods: Mapping[str, jsonrpc.Handler] | None = None, mcp: Any = None) -> Any:
    """`methods`: the JSON-RPC table the wiring built (default: the gateway's own methods only);
    `mcp`: the app's `mcp_transport.McpTransport` (default: a new one)."""
    rpc_methods = jsonrpc.METHODS if methods is None else methods

    async def rpc(request: Request) -> Response:
        # The caller is known from the headers before a byte of the body is read (401 at once).
        try:
            caller = await pipeline.admit(bearer(request.headers), request.headers.get("stockade-session") or "rpc",
                                          "jsonrpc", request.client.host if request.client else None)
            if caller.session != "rpc":
                sessions.check(pipeline.db, caller.agent, caller.session)
        except StockadeError as e:
            if e.type in ("RateLimited", "Unavailable"):   # both say when to come back
                return throttled_response(e)
            status = 401 if e.type == "Unauthenticated" else 400
            return _rpc_error(status, AUTH_FAILED if status == 401 else e.code, e.type, e.message)
        try:
            body = await read_body(request.scope, request.receive, max_body)
        except StockadeError as e:   # PayloadTooLarge
            await pipeline.refuse(caller, e, b"")
            return _rpc_error(413, INVALID_REQUEST, "InvalidInput", e.message)
        except BodyTimeout:
            return _rpc_error(408, INVALID_REQUEST, "InvalidInput", "the request body did not arrive in time")
        except ClientGone:
            return Response(status_code=400)
        out = await jsonrpc.handle(RpcContext(pipeline, caller), body, rpc_methods)
        if out is None:
            return Response(status_code=204)
        return Response(out, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    limits = pipeline.home.config().gateway
    pipeline.auth_failures = AuthFailures(burst=limits.auth_failure_burst,
                                          per_second=1.0 / limits.auth_failure_refill_seconds)
    routes: list[Any] = [Route("/rpc", rpc, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    from stockade.gateway import mcp_transport

    if mcp is None:
        mcp = mcp_transport.McpTransport(pipeline, max_body)
    routes.extend(mcp.routes())
    app = Starlette(routes=routes, lifespan=_lifespan(pipeline, mcp.lifespan()))
    return GuardMiddleware(_RpcFirst(app, rpc), extra_origins or [])


class _RpcFirst:
    """`POST /rpc` straight to its endpoint; everything else through the Starlette app.

    The endpoint is the same function with the same Request and Response objects; what is left
    out is the stack of generic layers in between (error and exception middleware, routing,
    the endpoint wrapper), about a tenth of the HTTP layer's CPU per call. What the error
    middleware does for a bug, a 500 before the exception goes on to the server's log, is done
    here too."""

    def __init__(self, app: Any, endpoint: Any):
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["path"] == "/rpc" and scope["method"] == "POST"
                and not scope.get("root_path")):
            return await self.app(scope, receive, send)
        started = False

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, sending)
        except Exception:
            if not started:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise


AUTH_FLUSH_SECONDS = 5.0


def _lifespan(pipeline: Pipeline, inner: Any) -> Any:
    """The MCP session manager's lifespan, plus the writer of failed-authentication summaries
    (each window's count is written when it ends, and every open one at shutdown)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def flusher() -> None:
            while True:
                await anyio.sleep(AUTH_FLUSH_SECONDS)
                try:
                    await pipeline.flush_auth()
                except Exception:   # the audit writer refused (disk full...): it reports that itself
                    log.exception("writing failed-authentication summaries failed")

        async with inner(app), anyio.create_task_group() as tg:
            tg.start_soon(flusher)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await pipeline.flush_auth(final=True)

    return lifespan


__all__ = ["bearer", "build_app"]
