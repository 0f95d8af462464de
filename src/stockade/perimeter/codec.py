"""Types shared by the two SPA profiles: the verified request and the silent-drop reason.

Every rejection is a `Reject(reason)`: the daemon counts it by reason and never answers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
_PORTSPEC = re.compile(r"(tcp|udp)/([0-9]{1,5})")


class Reject(Exception):  # noqa: N818 - a verdict, not an error the caller must handle specially
    """A packet that must be dropped silently; `reason` is a short stable counter name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Port:
    proto: str  # "tcp" | "udp"
    port: int

    def __str__(self) -> str:
        return f"{self.proto}/{self.port}"


def parse_port(spec: str) -> Port:
    """`tcp/22` -> Port; raises ValueError on anything else (no ranges, names, spaces, case)."""
    m = _PORTSPEC.fullmatch(spec) if isinstance(spec, str) else None
    if not m or not 1 <= int(m.group(2)) <= 65535 or m.group(2) != str(int(m.group(2))):
        raise ValueError(f"expected proto/port like tcp/22, got {spec!r}")
    return Port(m.group(1), int(m.group(2)))


@dataclass(frozen=True)
class SpaRequest:
    """What an authenticated, decrypted, well-formed packet asks for (before stanza policy)."""

    profile: str                      # "fwknop" | "native"
    stanza: str                       # name of the stanza whose keys verified it
    allow_ip: IPAddress | None        # None: "use the packet's source" (0.0.0.0 / family 0)
    ports: tuple[Port, ...]
    timestamp: float                  # seconds since the epoch
    client_timeout: int               # 0: not requested
    user: str = ""
