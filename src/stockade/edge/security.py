"""Host/Origin checks (DNS-rebinding protection) and body caps, as plain ASGI middleware.

A browser page on another origin must not be able to drive the gateway or the dashboard: a
request whose Origin is not a loopback origin (or one the owner listed) gets 403, and a Host
header that is not a loopback name gets 421 (a rebinding attacker's page carries its own name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _host_only(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host: str | None, extra: Iterable[str] = ()) -> bool:
    """Pure. Host header must name loopback (any port) or an owner-listed name."""
    if not host:
        return False
    h = _host_only(host)
    if h in LOOPBACK_NAMES or h in {x.lower() for x in extra}:
        return True
    try:
        return ipaddress.ip_address(h.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str | None, extra: Iterable[str] = ()) -> bool:
    """Pure. No Origin (non-browser clients) is fine; otherwise it must be a loopback origin."""
    if origin is None:
        return True
    if origin in set(extra):
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    h = parts.hostname.lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    """Refuses bad Host/Origin before any route runs (HTTP and WebSocket)."""

    def __init__(self, app: Any, extra_origins: Iterable[str] = (), extra_hosts: Iterable[str] = ()):
        self.app = app
        self.extra_origins = list(extra_origins)
        self.extra_hosts = list(extra_hosts)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host, origin = _host_and_origin(scope.get("headers", []))
        if not host_allowed(host, self.extra_hosts):
            return await _refuse(scope, send, 421, "misdirected request: Host is not a loopback name")
        if not origin_allowed(origin, self.extra_origins):
            return await _refuse(scope, send, 403, "forbidden: cross-origin request refused")
        return await self.app(scope, receive, send)


def _host_and_origin(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The Host and Origin headers (the last of each, as a dict of them all would keep), without
    decoding every other header of every request."""
    host = origin = None
    for k, v in headers:
        if len(k) in (4, 6):
            name = k.lower()
            if name == b"host":
                host = v.decode("latin-1")
            elif name == b"origin":
                origin = v.decode("latin-1")
    return host, origin


async def _refuse(scope: dict[str, Any], send: Any, status: int, message: str) -> None:
    import json

    if scope["type"] == "websocket":
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "websocket.http.response.body",
                    "body": json.dumps({"error": {"type": "Forbidden", "message": message}}).encode()})
        return
    body = json.dumps({"error": {"type": "Forbidden", "message": message, "recovery": []}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
