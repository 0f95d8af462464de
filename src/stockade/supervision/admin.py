"""The admin channel: `run/admin.sock`, JSON lines, peer-credential checked.

The owner's CLI talks to the running gateway here (approvals, vault unseal, watch, ...). Only
uid 0 or the uid the gateway runs as may connect (SO_PEERCRED); the socket is 0600 in a 0700
directory as a second fence.

Wire: one request line `{"cmd": "vault.unseal", "args": {...}}`, one response line
`{"ok": true, "result": ...}` or `{"ok": false, "error": {type, message, recovery}}`.
A command registered with `stream=True` instead writes any number of `{"event": ...}` lines
until the client disconnects (used by `stockade watch`).

Parts register commands with `@admin_command("name")`: `async fn(gw, args) -> result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from stockade.core.errors import StockadeError, err
from stockade.core.home import Home

MAX_LINE = 1 << 20
AdminFn = Callable[..., Awaitable[Any]]
ADMIN_COMMANDS: dict[str, tuple[AdminFn, bool]] = {}


def admin_command(name: str, *, stream: bool = False) -> Callable[[AdminFn], AdminFn]:
    def deco(fn: AdminFn) -> AdminFn:
        ADMIN_COMMANDS[name] = (fn, stream)
        return fn

    return deco


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class AdminServer:
    def __init__(self, gw: Any):
        self.gw = gw
        self.path: Home = gw.home
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.gw.home.admin_sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.gw.home.admin_sock.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that went away or sent garbage; it gets nothing more
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid not in (0, os.geteuid()):
            await _send(writer, _fail(err("Unauthenticated", "admin socket: uid not allowed")))
            return
        line = await reader.readline()
        try:
            req = json.loads(line)
            cmd, args = req["cmd"], req.get("args", {})
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            await _send(writer, _fail(err("InvalidInput", "bad admin request")))
            return
        entry = ADMIN_COMMANDS.get(cmd)
        if entry is None:
            await _send(writer, _fail(err("InvalidInput", f"unknown admin command {cmd!r}")))
            return
        fn, stream = entry
        try:
            if stream:
                async def emit(event: Any) -> None:
                    await _send(writer, {"event": event})

                await fn(self.gw, args, emit)
            else:
                await _send(writer, {"ok": True, "result": await fn(self.gw, args)})
        except StockadeError as e:
            await _send(writer, _fail(e))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug in a command: the CLI gets a clean error, the log the details
            import logging

            logging.getLogger("stockade.admin").exception("admin command %s failed", cmd)
            await _send(writer, _fail(err("Internal", f"admin command {cmd} failed ({type(e).__name__})")))


def _fail(e: StockadeError) -> dict[str, Any]:
    return {"ok": False, "error": e.to_dict()}


async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(json.dumps(obj, default=str).encode() + b"\n")
    await writer.drain()


# -- client side (CLI) --------------------------------------------------------------------------
def running(home: Home) -> bool:
    """True when a gateway answers on this home's admin socket."""
    if not home.admin_sock.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(home.admin_sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _send_request(home: Home, cmd: str, args: dict[str, Any] | None,
                  timeout: float | None) -> tuple[socket.socket, Any]:
    """Connect and send one request line; (socket, its file) or `Unreachable`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(home.admin_sock))
    except OSError:
        s.close()
        raise err("Unreachable", f"no running gateway for {home.root} (stockade serve --home {home.root})") from None
    f = s.makefile("rwb")
    f.write(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
    f.flush()
    return s, f


def _remote_error(e: dict[str, Any] | None) -> StockadeError:
    e = e or {}
    return StockadeError(e.get("type", "Internal"), e.get("message", "admin command failed"), e.get("recovery"),
                         {k: v for k, v in e.items() if k not in ("type", "message", "recovery")})


def call(home: Home, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """One request/response; raises StockadeError (type `Unreachable` if no server)."""
    s, f = _send_request(home, cmd, args, timeout)
    with s, f:
        line = f.readline(MAX_LINE)
    if not line:
        raise err("Unreachable", "the gateway closed the admin connection")
    resp = json.loads(line)
    if not resp.get("ok"):
        raise _remote_error(resp.get("error"))
    return resp.get("result")


def stream(home: Home, cmd: str, args: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """Yield events of a streaming command until the server closes."""
    s, f = _send_request(home, cmd, args, None)
    with s, f:
        for line in f:
            msg = json.loads(line)
            if "event" in msg:
                yield msg["event"]
            elif not msg.get("ok", True):
                raise _remote_error(msg.get("error"))
