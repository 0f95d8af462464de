"""The edge's per-request pieces on their own: the body deadline, and which Host and Origin
the guard judges (the end-to-end refusals are in test_gateway_e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from stockade.edge.body import BodyTimeout, ClientGone, read_body
from stockade.edge.security import GuardMiddleware, _host_and_origin


def _receiver(messages: list[dict[str, Any]]) -> Any:
    async def receive() -> MutableMapping[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)            # a client that stops sending
        raise AssertionError("unreachable")
    return receive


def test_body_is_read_whole() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
    assert asyncio.run(read_body({"headers": []}, _receiver(parts), 10)) == b"abc"


def test_a_body_that_stops_arriving_times_out() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}]
    with pytest.raises(BodyTimeout):
        asyncio.run(read_body({"headers": []}, _receiver(parts), 10, deadline=0.05))


def test_a_client_that_leaves_is_gone_and_a_big_body_refused() -> None:
    with pytest.raises(ClientGone):
        asyncio.run(read_body({"headers": []}, _receiver([{"type": "http.disconnect"}]), 10))
    from stockade.core.errors import StockadeError
    with pytest.raises(StockadeError):
        asyncio.run(read_body({"headers": [(b"content-length", b"11")]}, _receiver([]), 10))


def test_guard_reads_the_last_host_and_origin_whatever_their_case() -> None:
    headers = [(b"Host", b"evil.example"), (b"accept", b"*/*"), (b"host", b"127.0.0.1:7700"),
               (b"ORIGIN", b"http://localhost")]
    assert _host_and_origin(headers) == ("127.0.0.1:7700", "http://localhost")
    assert _host_and_origin([(b"hosts", b"x"), (b"origins", b"y")]) == (None, None)


@pytest.mark.parametrize("headers,status", [
    ([(b"host", b"127.0.0.1")], 200), ([(b"host", b"attacker.example")], 421),
    ([(b"host", b"localhost"), (b"origin", b"https://attacker.example")], 403), ([], 421),
])
def test_guard_refuses_before_the_app(headers: list[tuple[bytes, bytes]], status: int) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    asyncio.run(GuardMiddleware(app)({"type": "http", "headers": headers}, None, send))
    assert sent[0]["status"] == status
