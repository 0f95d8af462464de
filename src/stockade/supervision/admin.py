"""The admin channel's server: `run/admin.sock`, JSON lines, peer-credential checked.

The owner's CLI talks to the running gateway here (approvals, vault unseal, watch, ...). Only
uid 0 or the uid the gateway runs as may connect (SO_PEERCRED); the socket is 0600 in a 0700
directory as a second fence. The wire format, the command table and the client side are in
`stockade.core.admin`; the commands are the ones the wiring registered in `gw.admin_commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from typing import Any

from stockade.core.admin import ADMIN_PEER, MAX_LINE, describe_peer, running
from stockade.core.errors import StockadeError, err
from stockade.core.logs import log
from stockade.core.wiring import Gateway


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class AdminServer:
    def __init__(self, gw: Gateway):
        self.gw = gw
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.gw.home.admin_sock
        if running(self.gw.home):   # a live gateway answers there: never take its socket away
            raise err("Conflict", f"another gateway answers on {path}; stop it before starting this one")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()           # a stale socket a crashed server left
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
            with contextlib.suppress(FileNotFoundError):   # only the socket this server made
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
        pid = struct.unpack("3i", writer.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        ADMIN_PEER.set(describe_peer(pid, uid))     # who decides, for the commands of this connection
        line = await reader.readline()
        try:
            req = json.loads(line)
            cmd, args = req["cmd"], req.get("args", {})
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            await _send(writer, _fail(err("InvalidInput", "bad admin request")))
            return
        command = self.gw.admin_commands.get(cmd)
        if command is None:
            await _send(writer, _fail(err("InvalidInput", f"unknown admin command {cmd!r}")))
            return
        fn = command.fn
        try:
            if command.stream:
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
            log.exception("admin command %s failed", cmd)
            await _send(writer, _fail(err("Internal", f"admin command {cmd} failed ({type(e).__name__})")))


def _fail(e: StockadeError) -> dict[str, Any]:
    return {"ok": False, "error": e.to_dict()}


async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(json.dumps(obj, default=str).encode() + b"\n")
    await writer.drain()
