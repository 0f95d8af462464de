"""One running upstream server: its confined process and the MCP client session to it.

The process is the long-lived sandbox launcher (`stockade.sandbox.longlived`); its first stdin
line is the launch spec, then stdin/stdout carry the MCP stdio transport, driven by the `mcp`
SDK's `ClientSession`. What the server writes is untrusted: a line longer than the bound kills
it (the call in flight fails with ResourceExhausted), stderr is kept bounded for `upstream logs`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.message import SessionMessage

from stockade.core.errors import StockadeError, err
from stockade.sandbox.longlived import SETUP_ERROR_EXIT, Spec

log = logging.getLogger("stockade.upstream")
LOG_LINES = 500
LAUNCHER = (sys.executable, "-I", "-B", "-m", "stockade.sandbox.longlived")


class ToolSession:
    """What both kinds of upstream session share: listing tools, calling one, and following
    `tools/list_changed`. A subclass gives `_session()` (the live SDK session, or Unreachable)
    and `_failed(e)` (what a failed call means for its transport)."""

    label: str
    on_tools_changed: Callable[[], Awaitable[None]] | None

    def _session(self) -> ClientSession:
        raise NotImplementedError

    async def _failed(self, e: Exception) -> StockadeError:
        raise NotImplementedError

    async def _message(self, message: Any) -> None:
        method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
        if method == "notifications/tools/list_changed" and self.on_tools_changed is not None:
            asyncio.ensure_future(self.on_tools_changed())   # any awaitable, on the running loop

    async def tools(self) -> list[dict[str, Any]]:
        """Every tool (all pages, at most 20), as JSON."""
        session = self._session()
        out: list[dict[str, Any]] = []
        cursor = None
        for _ in range(20):
            res = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            out += [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tools]
            cursor = res.next_cursor
            if not cursor:
                break
        return out

    async def call(self, tool: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One tools/call as JSON; errors are StockadeErrors saying what happened to the server."""
        session = self._session()
        try:
            res = await asyncio.wait_for(session.call_tool(tool, args), timeout)
        except TimeoutError:
            raise err("Timeout", f"upstream server {self.label} did not answer within {timeout:g}s",
                      timeout=timeout) from None
        except StockadeError:
            raise
        except Exception as e:
            raise await self._failed(e) from None
        return res.model_dump(mode="json", by_alias=True, exclude_none=True)


def answered_error(label: str, e: Exception) -> StockadeError:
    """The server answered the call with a JSON-RPC error: bad arguments, or its own failure."""
    code = getattr(getattr(e, "error", None), "code", None)
    msg = str(getattr(getattr(e, "error", None), "message", None) or e)[:500]
    if code == types.INVALID_PARAMS:
        return err("InvalidInput", f"upstream server {label}: {msg}")
    return err("Internal", f"upstream server {label} answered with an error: {msg}",
               upstream_code=code if isinstance(code, int) else None)


class Connection(ToolSession):
    """Start with `await start()`; `tools`, `call`; `stop()` kills the whole server."""

    def __init__(self, label: str, spec: Spec, *, max_line: int, startup_timeout: float,
                 on_tools_changed: Callable[[], Awaitable[None]] | None = None,
                 launcher: tuple[str, ...] = LAUNCHER):
        self.label = label
        self.spec = spec
        self.max_line = max_line
        self.startup_timeout = startup_timeout
        self.on_tools_changed = on_tools_changed
        self.launcher = launcher
        self.proc: asyncio.subprocess.Process | None = None
        self.session: ClientSession | None = None
        self.logs: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.overflow = False
        self.setup_error: str | None = None
        self.exited = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.session is not None

    async def start(self) -> None:
        """Spawn, initialize; raises SandboxUnavailable (with the launcher's reason) on failure."""
        self._ready = asyncio.get_running_loop().create_future()
        self.proc = await asyncio.create_subprocess_exec(
            *self.launcher, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=self.max_line, env={"PATH": "/usr/bin:/bin"},
            cwd="/", start_new_session=True)
        assert self.proc.stdin is not None  # noqa: S101
        self.proc.stdin.write((self.spec.to_json() + "\n").encode())
        self._task = asyncio.create_task(self._run(), name=f"upstream-{self.label}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.startup_timeout)
        except TimeoutError:
            await self.stop()
            raise err("SandboxUnavailable", f"upstream server {self.label} did not start within "
                      f"{self.startup_timeout:g}s") from None
        except StockadeError:
            await self.stop()
            raise

    async def _run(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stdin is not None  # noqa: S101
        read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](16)

        async def reader() -> None:
            async with read_send:
                while True:
                    try:
                        line = await proc.stdout.readline()          # type: ignore[union-attr]
                    except (ValueError, asyncio.LimitOverrunError):
                        self.overflow = True
                        self.logs.append(f"[stockade] output line over {self.max_line} bytes: server killed")
                        self._kill()
                        return
                    if not line:
                        return
                    try:
                        msg = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError:
                        self.logs.append("[stockade] a stdout line that is not JSON-RPC was dropped")
                        continue
                    await read_send.send(SessionMessage(msg))

        async def writer() -> None:
            async with write_recv:
                async for m in write_recv:
                    data = m.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    proc.stdin.write(data.encode())                  # type: ignore[union-attr]
                    with contextlib.suppress(ConnectionError):
                        await proc.stdin.drain()                     # type: ignore[union-attr]

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)
                tg.start_soon(self._stderr)
                async with ClientSession(read_recv, write_send, message_handler=self._message) as session:
                    try:
                        await session.initialize()
                    except Exception as e:  # the server died or spoke nonsense during the handshake
                        await proc.wait()
                        self._not_ready(e)
                        tg.cancel_scope.cancel()
                        return
                    self.session = session
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                    await proc.wait()
                    self.session = None
                tg.cancel_scope.cancel()
        except Exception as e:  # noqa: BLE001
            log.warning("upstream %s: session ended: %s", self.label, e)
            self._not_ready(e)
        finally:
            self.session = None
            self._kill()
            with contextlib.suppress(ProcessLookupError, Exception):
                await proc.wait()
            self.exited.set()

    def _not_ready(self, e: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            why = self.setup_error or f"{type(e).__name__}: {e}"
            self._ready.set_exception(err("SandboxUnavailable", f"upstream server {self.label} did not start "
                                          f"({why})"[:500]))
            self._ready.exception()  # observed here; start() re-raises it

    async def _stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None  # noqa: S101
        while True:
            try:
                line = await self.proc.stderr.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()[:2000]
            if text.startswith('{"setup_error"'):
                self.setup_error = text[len('{"setup_error": "'):-2]
            self.logs.append(text)

    async def _failed(self, e: Exception) -> StockadeError:
        if self.overflow:
            return err("ResourceExhausted", f"upstream server {self.label} sent a message over "
                       f"{self.max_line} bytes; it was stopped", resource="output", limit=self.max_line)
        # A server that died mid-call closes the connection before it is reaped: give the
        # exit a moment to be seen, so the agent learns the server stopped (not a server error).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 2.0)
        if not self.alive or self.exited.is_set():
            return err("Unreachable", f"upstream server {self.label} stopped during the call; it is restarted",
                       [{"action": "retry", "description": "Call again once the server is back (system.health "
                         "shows it)."}])
        return answered_error(self.label, e)

    def _session(self) -> ClientSession:
        if self.session is None or not self.alive:
            raise err("Unreachable", f"upstream server {self.label} is not running (it is restarted)")
        return self.session

    def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self) -> None:
        self._kill()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task

    @property
    def exit_status(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def setup_failed(self) -> bool:
        return self.exit_status == SETUP_ERROR_EXIT
