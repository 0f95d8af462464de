"""One session with an upstream server that already runs on loopback, over Streamable HTTP.

stockade neither starts nor confines such a server (it runs elsewhere, under whatever the owner
gave it); it is the agent's only way to it, so every call still goes through the pipeline. The
session mirrors `client.Connection` (start, tools, call, stop, `exited` when it ends) so the
supervisor treats both alike: a session that breaks (the server went away, or forgot the session
after its own restart) ends, and the supervisor opens a new one after its backoff.

What comes back is untrusted: each response body is cut off past the bound (the call fails with
ResourceExhausted, the session is dropped), and each SSE event is bounded alike. Headers, secrets resolved, go
to this URL only: the SDK follows a redirect only within the endpoint's origin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from stockade.core.errors import StockadeError, err
from stockade.upstream.client import LOG_LINES, ToolSession, answered_error

log = logging.getLogger("stockade.upstream")
TRANSPORT_FAILED = (types.CONNECTION_CLOSED, types.INVALID_REQUEST)   # closed / "Session terminated"


class TooLarge(httpx2.TransportError):
    """A response body past the bound (raised while it is read, so it is never held whole)."""


class _Limited(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, on_over: Callable[[], None]):
        self.inner, self.limit, self.on_over = inner, limit, on_over

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                self.on_over()
                raise TooLarge(f"response body over {self.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Bounded(httpx2.AsyncBaseTransport):
    """Every response body bounded, but an SSE stream's: a session's stream lives as long as the
    session, so its bound is per event (the SDK's `max_sse_event_size`), not on the sum."""

    def __init__(self, limit: int, on_over: Callable[[], None]):
        self.inner = httpx2.AsyncHTTPTransport()
        self.limit, self.on_over = limit, on_over

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        resp = await self.inner.handle_async_request(request)
        assert isinstance(resp.stream, httpx2.AsyncByteStream)  # noqa: S101
        if not resp.headers.get("content-type", "").lower().startswith("text/event-stream"):
            resp.stream = _Limited(resp.stream, self.limit, self.on_over)
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


class HttpConnection(ToolSession):
    """Start with `await start()`; `tools`, `call`; `stop()` ends the session (DELETE)."""

    pid = None
    exit_status = None

    def __init__(self, label: str, url: str, headers: dict[str, str], *, max_bytes: int,
                 startup_timeout: float, on_tools_changed: Callable[[], Awaitable[None]] | None = None):
        self.label, self.url, self.headers = label, url, headers
        self.max_bytes = max_bytes
        self.startup_timeout = startup_timeout
        self.on_tools_changed = on_tools_changed
        self.session: ClientSession | None = None
        self.logs: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.overflow = False
        self.setup_error: str | None = None
        self.exited = asyncio.Event()
        self._closing = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.session is not None and not self._closing.is_set() and not self.exited.is_set()

    def setup_failed(self) -> bool:
        return False

    async def start(self) -> None:
        """Connect and initialize; SandboxUnavailable (saying why) when the server does not answer."""
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"upstream-{self.label}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.startup_timeout)
        except TimeoutError:
            await self.stop()
            raise err("SandboxUnavailable", f"upstream server {self.label} ({self.url}) did not answer within "
                      f"{self.startup_timeout:g}s") from None
        except StockadeError:
            await self.stop()
            raise

    def _over(self) -> None:
        self.overflow = True
        self.logs.append(f"[stockade] a response over {self.max_bytes} bytes: session dropped")
        self._closing.set()

    async def _run(self) -> None:
        http = httpx2.AsyncClient(headers=self.headers, transport=_Bounded(self.max_bytes, self._over),
                                  timeout=httpx2.Timeout(30.0, read=300.0))
        try:
            async with http, streamable_http_client(self.url, http_client=http,
                                                    max_sse_event_size=self.max_bytes) as (read, write), \
                    ClientSession(read, write, message_handler=self._message) as session:
                await session.initialize()
                self.session = session
                self.logs.append(f"[stockade] session opened with {self.url}")
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                await self._closing.wait()
        except BaseException as e:  # noqa: BLE001 - the session ended: say why, never raise out of the task
            why = _describe(e)
            self.logs.append(f"[stockade] session ended: {why}"[:2000])
            if self._ready is not None and not self._ready.done():
                self.setup_error = why
                self._ready.set_exception(err("SandboxUnavailable", f"upstream server {self.label} ({self.url}) "
                                              f"did not answer ({why})"[:500]))
                self._ready.exception()
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.session = None
            self.exited.set()

    def _session(self) -> ClientSession:
        if self.session is None or not self.alive:
            raise err("Unreachable", f"upstream server {self.label} is not connected (it is reconnected)")
        return self.session

    async def _failed(self, e: Exception) -> StockadeError:
        """A broken session is dropped (the supervisor reconnects after its backoff)."""
        code = getattr(getattr(e, "error", None), "code", None)
        msg = str(getattr(getattr(e, "error", None), "message", None) or e)[:500]
        if "Server-sent event exceeded" in msg:      # the SDK's per-event bound (max_sse_event_size)
            self._over()
        if self.overflow:
            return err("ResourceExhausted", f"upstream server {self.label} sent a response over {self.max_bytes} "
                       "bytes; the session was dropped", resource="output", limit=self.max_bytes)
        if code is None or code in TRANSPORT_FAILED or self.exited.is_set():
            self._closing.set()
            self.logs.append(f"[stockade] call failed at the transport: {msg}"[:2000])
            return err("Unreachable", f"upstream server {self.label} ({self.url}) did not answer: {msg}",
                       [{"action": "retry", "description": "Call again once the server is back (system.health "
                         "shows it)."}])
        return answered_error(self.label, e)

    async def stop(self) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task


def _describe(e: BaseException) -> str:
    """The innermost cause of a failure (task groups wrap it in exception groups)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"[:300]
