"""From bytes to a grant decision: pure functions over a keyring built from the config.

`authenticate` proves who sent the packet (one stanza's keys), `authorize` applies the rules
that do not depend on crypto (time window, source binding, ports, grant length). The daemon
adds the replay cache between the two and the firewall after them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from stockade.perimeter import fwknop, native
from stockade.perimeter.codec import IPAddress, Port, Reject, SpaRequest
from stockade.perimeter.config import PerimeterConfig, Stanza


@dataclass(frozen=True)
class Grant:
    ip: IPAddress
    ports: tuple[Port, ...]
    seconds: int
    stanza: str
    profile: str


@dataclass
class Keyring:
    """Keys indexed for the cheapest lookup: fwknop stanzas in order, native keys by id."""

    stanzas: dict[str, Stanza] = field(default_factory=dict)
    fwknop: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    native: dict[bytes, tuple[str, native.NativeKey]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: PerimeterConfig) -> Keyring:
        ring = cls()
        for s in cfg.stanzas:
            ring.stanzas[s.name] = s
            if (keys := s.fwknop_keys()) is not None:
                ring.fwknop.append((s.name, *keys))
            if (secret := s.native_secret()) is not None:
                nk = native.NativeKey.from_secret(secret)
                if nk.kid in ring.native:
                    raise ValueError(f"stanzas {ring.native[nk.kid][0]!r} and {s.name!r} share a native key")
                ring.native[nk.kid] = (s.name, nk)
        return ring


def authenticate(wire: bytes, ring: Keyring) -> SpaRequest:
    """Which profile, which stanza, and what it asks for; Reject on anything else."""
    if not wire:
        raise Reject("bad_length")
    if wire[0] == native.VERSION:
        kid = native.precheck(wire)
        hit = ring.native.get(kid)
        if hit is None:
            raise Reject("unknown_key")
        name, key = hit
        return native.parse_plaintext(native.open_packet(wire, key), name)
    s = fwknop.precheck(wire)
    for name, enc_key, hkey in ring.fwknop:
        try:
            body = fwknop.check_hmac(s, hkey)
        except Reject:
            continue
        return fwknop.parse_plaintext(fwknop.decrypt(body, enc_key), name)
    raise Reject("bad_hmac")


def normalize_source(src: str) -> IPAddress:
    ip = ipaddress.ip_address(src.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def authorize(req: SpaRequest, src: IPAddress, now: float, stanza: Stanza, *,
              grant_seconds: int, max_skew: int) -> Grant:
    """Time window, source binding, port subset and grant length for an authenticated request."""
    if req.timestamp < now - max_skew:
        raise Reject("stale")
    if req.timestamp > now + max_skew:
        raise Reject("future")
    if req.allow_ip is None:
        if not stanza.allow_source_ip:
            raise Reject("zero_address")
    elif req.allow_ip != src:
        raise Reject("address_mismatch")
    allowed = stanza.ports
    if not req.ports or any(p not in allowed for p in req.ports):
        raise Reject("port_not_allowed")
    seconds = grant_seconds
    if req.client_timeout and stanza.max_grant_seconds:
        seconds = min(req.client_timeout, stanza.max_grant_seconds)
    return Grant(src, req.ports, seconds, req.stanza, req.profile)


def decide(wire: bytes, src: IPAddress, now: float, ring: Keyring, cfg: PerimeterConfig) -> tuple[SpaRequest, Grant]:
    """authenticate + authorize (no replay cache: that is state, kept by the daemon)."""
    req = authenticate(wire, ring)
    grant = authorize(req, src, now, ring.stanzas[req.stanza], grant_seconds=cfg.grant_seconds,
                      max_skew=cfg.max_skew_seconds)
    return req, grant
