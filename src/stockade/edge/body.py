"""Reading a request body at the edge: bounded in size and in time, and only after the caller is known.

A body is read only once the headers authenticated the caller (the transports call this after
that), never more than the cap (checked against `Content-Length` first, then as it arrives), and
never for longer than `BODY_READ_SECONDS`: a client that trickles its body (slowloris) is cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import anyio

from stockade.core.errors import err
from stockade.core.limits import BODY_READ_SECONDS

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BodyTimeout(Exception):
    """The body did not arrive in time (HTTP 408)."""


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k.lower() == b"content-length":
            return int(v) if v.isdigit() else None
    return None


async def read_body(scope: MutableMapping[str, Any], receive: Receive, limit: int,
                    deadline: float = BODY_READ_SECONDS) -> bytes:
    """The whole body, or `PayloadTooLarge` (StockadeError), `BodyTimeout`, `ClientGone`."""
    declared = declared_length(scope.get("headers", []))
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        # asyncio's own timeout: anyio's cancel scope costs twice as much, on every request.
        async with asyncio.timeout(deadline):
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientGone
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyTimeout from None


def replay(body: bytes, upstream: Receive | None = None) -> Receive:
    """A `receive` that hands an already-read body to the next ASGI app, then passes on the
    connection's own messages (`http.disconnect`: a long response such as an SSE stream learns
    that its client left) or, without `upstream`, waits for ever."""
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if upstream is not None:
            return await upstream()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


def _too_large(limit: int) -> Exception:
    return err("PayloadTooLarge", f"request body larger than {limit} bytes")
