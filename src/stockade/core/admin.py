"""The admin channel's contract: its commands, its wire format, and the client side.

The owner's CLI talks to the running gateway over `run/admin.sock` (served by
`stockade.supervision.admin.AdminServer`). Wire: one request line
`{"cmd": "vault.unseal", "args": {...}}`, one response line `{"ok": true, "result": ...}` or
`{"ok": false, "error": {type, message, recovery}}`. A streaming command instead writes any
number of `{"event": ...}` lines until the client disconnects (used by `stockade watch`).

Commands are not registered on import: each part lists its own in a module-level
`ADMIN_COMMANDS` table (`{name: AdminCommand(fn)}`) and the wiring (`gateway.service`) puts every
part's table into one `AdminCommands` at start-up. This module is the bottom layer, so any part
(and the CLI) can speak to the admin socket without importing the part that serves it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from stockade.core.errors import StockadeError, err
from stockade.core.home import Home

MAX_LINE = 1 << 20
# `async fn(gw, args)` for a plain command, `async fn(gw, args, emit)` for a streaming one.
AdminFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class AdminCommand:
    """One admin command: its function and whether it streams events instead of one result."""

    fn: AdminFn
    stream: bool = False


class AdminCommands:
    """Every admin command of one running gateway, filled by the wiring at start-up."""

    def __init__(self) -> None:
        self._commands: dict[str, AdminCommand] = {}

    def register(self, table: Mapping[str, AdminCommand], owner: str) -> None:
        """Add a part's commands; two parts claiming one name is a wiring bug, refused at start."""
        for name, command in table.items():
            if name in self._commands:
                raise ValueError(f"admin command {name!r} of {owner} is already registered")
            self._commands[name] = command

    def get(self, name: str) -> AdminCommand | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)


# -- who is asking (server side) -----------------------------------------------------------------
# The peer of the admin request being served (set by the admin server from SO_PEERCRED for the
# task serving that connection): decisions record who made them, not a fixed "cli".
ADMIN_PEER: ContextVar[dict[str, Any] | None] = ContextVar("stockade_admin_peer", default=None)


def describe_peer(pid: int, uid: int) -> dict[str, Any]:
    """uid and pid from the kernel (SO_PEERCRED), the command from /proc (best effort: the
    process may be gone; its name is what it calls itself, the uid is what the kernel says)."""
    out: dict[str, Any] = {"via": "admin-socket", "uid": uid, "pid": pid}
    try:
        with open(f"/proc/{pid}/comm", "rb") as fh:
            out["command"] = fh.read(64).decode("utf-8", "replace").strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read(4096).split(b"\0")
        # The program and its subcommand only (`stockade approvals approve`): never the rest.
        out["cmdline"] = " ".join(a.decode("utf-8", "replace") for a in argv[:4] if a)[:256]
    except OSError:
        pass
    return out


# -- client side (CLI, offline tools) ------------------------------------------------------------
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


def remote_error(e: dict[str, Any] | None) -> StockadeError:
    """The StockadeError an admin response's `error` object describes."""
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
        raise remote_error(resp.get("error"))
    return resp.get("result")


def stream(home: Home, cmd: str, args: dict[str, Any] | None = None) -> Iterator[Any]:
    """Yield events of a streaming command until the server closes."""
    s, f = _send_request(home, cmd, args, None)
    with s, f:
        for line in f:
            msg = json.loads(line)
            if "event" in msg:
                yield msg["event"]
            elif not msg.get("ok", True):
                raise remote_error(msg.get("error"))
