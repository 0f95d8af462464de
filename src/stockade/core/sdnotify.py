"""systemd's readiness protocol (sd_notify(3)) in a few lines, without libsystemd.

A unit with `Type=notify` gets `NOTIFY_SOCKET` in its environment: a unix datagram socket path,
or an abstract one when it starts with `@`. The service sends newline-separated `KEY=VALUE`
assignments to it: `READY=1` once it serves, `RELOADING=1` while it reloads (with
`MONOTONIC_USEC`), `STOPPING=1` when it shuts down, `STATUS=...` for `systemctl status`.
Without `NOTIFY_SOCKET` (a terminal, a test, another supervisor) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

MAX_STATUS = 200


def message(**fields: str | int) -> bytes:
    """`KEY=VALUE` lines; pure. A value with a newline would end its assignment early, so it is cut."""
    lines = []
    for key, value in fields.items():
        text = str(value).split("\n", 1)[0]
        lines.append(f"{key}={text[:MAX_STATUS] if key == 'STATUS' else text}")
    return "\n".join(lines).encode()


def address(env: str | None) -> str | None:
    """The socket address `NOTIFY_SOCKET` names (`@name` is Linux's abstract namespace); None
    when unset or not a path (systemd only hands out absolute paths or abstract names)."""
    if not env:
        return None
    if env.startswith("@"):
        return "\0" + env[1:]
    return env if env.startswith("/") else None


def notify(**fields: str | int) -> bool:
    """Send one notification to systemd; True if sent. Never raises: readiness reporting must not
    stop the service it describes (a supervisor that lost its socket is a supervisor problem)."""
    addr = address(os.environ.get("NOTIFY_SOCKET"))
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message(**fields))
        return True
    except OSError:
        return False


def ready(status: str) -> bool:
    return notify(READY=1, STATUS=status)


def reloading() -> bool:
    """`Type=notify-reload` wants the monotonic clock with it; plain `notify` units accept it too."""
    return notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)


def stopping(status: str = "stopping") -> bool:
    return notify(STOPPING=1, STATUS=status)
