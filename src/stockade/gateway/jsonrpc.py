"""JSON-RPC 2.0 over `POST /rpc`: parsing is pure, dispatch goes to the pipeline.

`parse(body)` turns bytes into a list of `Request` (or one ready error); `handle` runs them in
order and returns the response bytes (None for a batch of only notifications). This module's own
methods are in METHODS; the wiring hands `handle` the gateway's whole table: these plus each
part's `RPC_METHODS` (approvals), collected at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    StockadeError,
    err,
)
from stockade.edge.bounded import parse_json
from stockade.gateway.costs import encode_args

MAX_BATCH = 100

_NO_ID = object()


@dataclass
class Request:
    method: str
    params: dict[str, Any]
    id: Any = _NO_ID          # absent id = notification

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


@dataclass
class Invalid:
    """A batch entry (or the whole body) that is not a valid request."""

    code: int
    message: str
    id: Any = None
    reason: str | None = None     # why the edge refused the body (depth, size, non-finite, encoding)


def parse(body: bytes) -> tuple[list[Request | Invalid], bool]:
    """Pure. Returns (entries, is_batch). Never raises. The body goes through the edge's bounded parse."""
    try:
        doc = parse_json(body)
    except StockadeError as e:
        if e.type == "ParseError":
            return [Invalid(PARSE_ERROR, "parse error: body is not valid JSON")], False
        return [Invalid(e.code, e.message, None, e.data.get("reason"))], False
    if isinstance(doc, list):
        if not doc:
            return [Invalid(INVALID_REQUEST, "invalid request: empty batch")], False
        if len(doc) > MAX_BATCH:
            return [Invalid(INVALID_REQUEST, f"invalid request: batch larger than {MAX_BATCH}")], False
        return [_one(x) for x in doc], True
    return [_one(doc)], False


def _one(doc: Any) -> Request | Invalid:
    if not isinstance(doc, dict):
        return Invalid(INVALID_REQUEST, "invalid request: expected an object")
    rid = doc.get("id", _NO_ID)
    if rid is not _NO_ID and not (rid is None or isinstance(rid, str | int) and not isinstance(rid, bool)):
        return Invalid(INVALID_REQUEST, "invalid request: id must be a string, a number or null")
    shown_id = None if rid is _NO_ID else rid
    if doc.get("jsonrpc") != "2.0":
        return Invalid(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', shown_id)
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        return Invalid(INVALID_REQUEST, "invalid request: method must be a non-empty string", shown_id)
    params = doc.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return Invalid(INVALID_PARAMS, "invalid params: params must be an object (by-name)", shown_id)
    extra = set(doc) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return Invalid(INVALID_REQUEST, f"invalid request: unknown member(s) {sorted(extra)}", shown_id)
    return Request(method, params, rid)


def error_response(rid: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        e["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": e}


def stockade_error(rid: Any, e: StockadeError) -> dict[str, Any]:
    return error_response(rid, e.code, e.message, e.to_dict())


# A method gets (context, params) and returns a JSON-able result or raises StockadeError.
Handler = Callable[[Any, dict[str, Any]], Awaitable[Any]]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn

    return deco


async def handle(ctx: Any, body: bytes, methods: Mapping[str, Handler] = METHODS) -> bytes | None:
    """Run the requests in `body` for the authenticated caller in `ctx`; every refusal is audited."""
    entries, is_batch = parse(body)
    out: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, Invalid):
            refusal = err("InvalidInput", entry.message, reason=entry.reason or "protocol")
            await ctx.pipeline.refuse(ctx.caller, refusal, body)
            out.append(error_response(entry.id, entry.code, entry.message,
                                      {"type": "InvalidInput", "message": entry.message, "recovery": refusal.recovery,
                                       "reason": refusal.data["reason"]}))
            continue
        resp = await _dispatch(ctx, entry, methods)
        if not entry.is_notification:
            out.append(resp)
    if not out:
        return None
    return json.dumps(out if is_batch else out[0], separators=(",", ":"), ensure_ascii=False).encode()


async def _dispatch(ctx: Any, req: Request, methods: Mapping[str, Handler]) -> dict[str, Any]:
    rid = None if req.is_notification else req.id
    fn = methods.get(req.method)
    if fn is None:
        await ctx.pipeline.refuse(ctx.caller, err("MethodNotFound", f"unknown method {req.method!r}"),
                                  encode_args({"method": req.method, "params": req.params}))
        return error_response(rid, METHOD_NOT_FOUND, f"method not found: {req.method}",
                              {"type": "MethodNotFound", "message": f"unknown method {req.method!r}",
                               "recovery": [{"action": "list_methods",
                                             "description": "Methods: " + ", ".join(sorted(methods))}]})
    try:
        result = await fn(ctx, req.params)
    except StockadeError as e:
        return stockade_error(rid, e)
    return {"jsonrpc": "2.0", "id": rid, "result": result}


# -- the gateway's methods -------------------------------------------------------------------
def _str_param(params: dict[str, Any], name: str) -> str:
    v = params.get(name)
    if not isinstance(v, str) or not v:
        raise err("InvalidInput", f"params.{name} must be a non-empty string")
    return v


def _only(params: dict[str, Any], allowed: set[str]) -> None:
    extra = set(params) - allowed
    if extra:
        raise err("InvalidInput", f"unknown params {sorted(extra)}")


# KruxOS-shaped clients name the same parameters differently (docs/gateway.md, "KruxOS clients").
ALIASES = {"capability": "name", "session_id": "session"}


def _unalias(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with KruxOS names turned into stockade's; both spellings at once is ambiguous."""
    out = dict(params)
    for alias, name in ALIASES.items():
        if alias in out:
            if name in out:
                raise err("InvalidInput", f"params.{alias} is an alias of params.{name}: send one of them")
            out[name] = out.pop(alias)
    return out


@method("capabilities.list")
async def _list(ctx: Any, params: dict[str, Any]) -> Any:
    _only(params, set())
    return {"capabilities": [{"name": d.name, "purpose": d.purpose, "when_to_use": d.when_to_use,
                              "default_tier": d.default_tier} for d in ctx.pipeline.visible(ctx.caller)]}


@method("capabilities.describe")
async def _describe(ctx: Any, params: dict[str, Any]) -> Any:
    _only(params, {"name"})
    return ctx.pipeline.describe(ctx.caller, _str_param(params, "name")).describe()


@method("capabilities.invoke")
async def _invoke(ctx: Any, params: dict[str, Any]) -> Any:
    try:
        params = _unalias(params)
        _only(params, {"name", "arguments", "session"})
        name = _str_param(params, "name")
        args = params.get("arguments", {})
        if not isinstance(args, dict):
            raise err("InvalidInput", "params.arguments must be an object")
        caller = ctx.caller
        if "session" in params:
            caller = ctx.session_caller(_str_param(params, "session"))
    except StockadeError as e:   # refused before the pipeline: audited here
        await ctx.pipeline.refuse(ctx.caller, e, encode_args(params))
        raise
    return await ctx.pipeline.invoke(caller, name, args)


@method("session.create")
async def _session_create(ctx: Any, params: dict[str, Any]) -> Any:
    _only(params, set())
    return {"session": ctx.create_session()}


@method("session.end")
async def _session_end(ctx: Any, params: dict[str, Any]) -> Any:
    params = _unalias(params)
    _only(params, {"session"})
    ctx.end_session(_str_param(params, "session"))
    return {"ended": True}


__all__ = ["INVALID_PARAMS", "METHODS", "handle", "method", "parse"]
