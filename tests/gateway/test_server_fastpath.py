"""`POST /rpc` goes straight to its endpoint (server._RpcFirst); the answers are the app's own.

What the skipped Starlette layers did must still happen: other methods and paths are routed as
before (405, 404), a bug in the endpoint is a 500 for the client and an exception for the
server's log, and the Host/Origin guard still runs first.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

from stockade.core.errors import err
from stockade.gateway import server


class _Pipeline:
    def __init__(self, fail: BaseException | None):
        cfg = SimpleNamespace(gateway=SimpleNamespace(auth_failure_burst=10, auth_failure_refill_seconds=5.0))
        self.home = SimpleNamespace(config=lambda: cfg)
        self.fail = fail

    async def admit(self, key: Any, session: str, transport: str, host: Any) -> Any:
        raise self.fail or err("Unauthenticated", "missing, unknown or revoked agent key")


class _Mcp:
    def routes(self) -> list[Any]:
        return []

    def lifespan(self) -> Any:
        @contextlib.asynccontextmanager
        async def inner(app: Any) -> Any:
            yield
        return inner


def _call(app: Any, method: str, path: str, host: bytes = b"127.0.0.1:7700",
          sent: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    sent = [] if sent is None else sent

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", host)], "client": ("127.0.0.1", 5), "scheme": "http",
             "server": ("127.0.0.1", 7700), "http_version": "1.1", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    return sent


def _app(fail: BaseException | None = None) -> Any:
    return server.build_app(_Pipeline(fail), mcp=_Mcp())  # type: ignore[arg-type]


def test_rpc_is_answered_by_its_endpoint() -> None:
    sent = _call(_app(), "POST", "/rpc")
    assert sent[0]["status"] == 401 and b"Unauthenticated" in sent[1]["body"]


@pytest.mark.parametrize("method,path,status", [("GET", "/rpc", 405), ("POST", "/rpc/", 307), ("GET", "/nope", 404)])
def test_everything_else_is_routed_as_before(method: str, path: str, status: int) -> None:
    assert _call(_app(), method, path)[0]["status"] == status


def test_a_bug_in_the_endpoint_is_a_500_and_reaches_the_log() -> None:
    sent: list[dict[str, Any]] = []
    with pytest.raises(RuntimeError, match="boom"):
        _call(_app(RuntimeError("boom")), "POST", "/rpc", sent=sent)
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"Internal Server Error"


def test_the_guard_still_runs_first() -> None:
    assert _call(_app(), "POST", "/rpc", host=b"attacker.example")[0]["status"] == 421
