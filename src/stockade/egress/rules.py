"""Pure egress checks: allowlist entries, forbidden ranges, URL and host parsing.

No sockets, no clock, no DNS. Everything that decides whether an address may be contacted lives
here so that it can be property-tested; the shells (nftables loader, capability handlers) only
call these functions. All refusals raise `EgressDenied` (a `StockadeError`) with a reason.

Rules enforced here (docs/egress.md has the user-facing version):
* allowlist entries are `host:port`, `ip:port` or `cidr:port` (IPv4 only, TCP);
* the always-forbidden ranges (private, loopback, link-local incl. 169.254.169.254 metadata,
  CGNAT, multicast, reserved, the host's own addresses and LAN) are refused unless an `ip:port`
  or `cidr:port` entry names them explicitly; a hostname entry never unlocks them, so a DNS
  answer pointing at a private address is refused;
* URLs: only http/https, no userinfo, no IPv6 literals, only canonical dotted-quad IPv4
  (no decimal/octal/hex/short spellings), ASCII LDH hostnames only (no IDN, no punycode),
  ports only as listed (the parsers are `stockade.core.urls`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stockade.core.errors import StockadeError

# The URL/host/IPv4 parsers live in core (policy conditions match hosts with the same ones);
# egress uses them, and this module keeps offering them under their names here.
from stockade.core.urls import MAX_URL as MAX_URL
from stockade.core.urls import IPv4 as IPv4
from stockade.core.urls import Url as Url
from stockade.core.urls import check_hostname as check_hostname
from stockade.core.urls import denied as denied
from stockade.core.urls import join_url as join_url
from stockade.core.urls import looks_numeric as looks_numeric
from stockade.core.urls import parse_ipv4 as parse_ipv4
from stockade.core.urls import parse_url as parse_url

Net4 = ipaddress.IPv4Network

# Ranges refused unless listed explicitly as ip/cidr entries (RFC 6890 special-purpose + cloud
# metadata). TEST-NET-2/3 (198.51.100/24, 203.0.113/24) are deliberately absent: they are not
# routed on the Internet and are what the tests use as "public" test hosts. The host's own
# addresses and on-link LAN subnets are added at load time (see `Forbidden.with_host`).
ALWAYS_FORBIDDEN: tuple[str, ...] = (
    "0.0.0.0/8",          # "this network"
    "10.0.0.0/8",         # RFC 1918
    "100.64.0.0/10",      # CGNAT (also Alibaba metadata 100.100.100.200)
    "127.0.0.0/8",        # loopback
    "169.254.0.0/16",     # link-local, incl. 169.254.169.254 cloud metadata
    "172.16.0.0/12",      # RFC 1918
    "192.0.0.0/24",       # IETF protocol assignments
    "192.0.2.0/24",       # TEST-NET-1 (this machine kind's own LAN)
    "192.88.99.0/24",     # 6to4 relay anycast
    "192.168.0.0/16",     # RFC 1918
    "198.18.0.0/15",      # benchmarking
    "224.0.0.0/4",        # multicast
    "240.0.0.0/4",        # reserved + broadcast
)


@dataclass(frozen=True)
class Forbidden:
    """The refused-unless-explicit address set."""

    nets: tuple[Net4, ...] = tuple(Net4(n) for n in ALWAYS_FORBIDDEN)

    def with_host(self, local_addrs: Iterable[str], lan_nets: Iterable[str]) -> Forbidden:
        extra = [Net4(f"{a}/32") for a in local_addrs] + [Net4(n, strict=False) for n in lan_nets]
        return Forbidden(tuple(self.nets) + tuple(extra))

    def reason(self, ip: IPv4) -> str | None:
        for n in self.nets:
            if ip in n:
                return f"{ip} is in the forbidden range {n}"
        return None


# -- allowlist ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One `sandbox.egress` item."""

    raw: str
    port: int
    host: str | None = None         # hostname entry
    net: Net4 | None = None         # ip (/32) or cidr entry (explicit: may name forbidden ranges)


def parse_entry(raw: Any) -> Entry:
    """`host:port` | `a.b.c.d:port` | `a.b.c.d/n:port` -> Entry, or ValueError with the reason."""
    if not isinstance(raw, str):
        raise ValueError(f"egress entry must be a string like host:443, not {type(raw).__name__}")
    s = raw.strip()
    if s.startswith("[") or s.count(":") != 1:
        raise ValueError(f"{raw!r}: expected host:port or cidr:port (IPv6 is not supported)")
    host, port_s = s.rsplit(":", 1)
    if not port_s.isascii() or not port_s.isdigit() or len(port_s) > 5 or not 0 < int(port_s) < 65536:
        raise ValueError(f"{raw!r}: port must be 1-65535")
    port = int(port_s)
    if "/" in host:
        addr, _, plen = host.partition("/")
        ip = parse_ipv4(addr)
        if ip is None or not plen.isascii() or not plen.isdigit() or not 0 <= int(plen) <= 32 or plen != str(int(plen)):
            raise ValueError(f"{raw!r}: invalid CIDR")
        try:
            net = Net4(f"{ip}/{int(plen)}", strict=True)
        except ValueError:
            raise ValueError(f"{raw!r}: CIDR has host bits set") from None
        return Entry(s, port, net=net)
    ip = parse_ipv4(host)
    if ip is not None:
        return Entry(s, port, net=Net4(f"{ip}/32"))
    try:
        name = check_hostname(host)
    except StockadeError as e:
        raise ValueError(f"{raw!r}: {e.message}") from None
    return Entry(s, port, host=name)


def parse_entries(items: Iterable[Any]) -> tuple[list[Entry], list[str]]:
    """(entries, errors): bad items are reported, never silently widened."""
    out: list[Entry] = []
    errors: list[str] = []
    for it in items:
        try:
            out.append(parse_entry(it))
        except ValueError as e:
            errors.append(str(e))
    return out, errors


@dataclass(frozen=True)
class Allowlist:
    """An agent's compiled allowlist: entries + the addresses hostnames resolved to."""

    entries: tuple[Entry, ...]
    resolved: dict[str, tuple[str, ...]] = field(default_factory=dict)   # host -> allowed IPs
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)    # host -> refused answers
    forbidden: Forbidden = Forbidden()

    def explicit(self, ip: IPv4, port: int) -> bool:
        return any(e.net is not None and e.port == port and ip in e.net for e in self.entries)

    def addr_allowed(self, ip: IPv4, port: int) -> bool:
        """Raw address check (what nftables enforces): explicit ip/cidr, or a resolved name."""
        if self.explicit(ip, port):
            return True
        if self.forbidden.reason(ip):
            return False
        s = str(ip)
        return any(e.host and e.port == port and s in self.resolved.get(e.host, ()) for e in self.entries)

    def ports_for_host(self, host: str) -> set[int]:
        return {e.port for e in self.entries if e.host == host}

    def targets(self, host: str, port: int) -> list[IPv4]:
        """Addresses to connect to for (host, port): the checked ones, in order. EgressDenied if none.

        `host` is a checked hostname or a canonical IPv4 string. No DNS happens here: hostnames
        map only to the addresses resolved (and filtered) when the policy was loaded.
        """
        ip = parse_ipv4(host)
        if ip is not None:
            if self.addr_allowed(ip, port):
                return [ip]
            why = self.forbidden.reason(ip)
            raise denied(f"{ip}:{port} is not in the egress allowlist" + (f" ({why})" if why else ""),
                         host=host, port=port)
        name = check_hostname(host)
        ports = self.ports_for_host(name)
        if not ports:
            raise denied(f"host {name!r} is not in the egress allowlist", host=name, port=port)
        if port not in ports:
            raise denied(f"port {port} is not allowed for {name} (allowed: {sorted(ports)})", host=name, port=port)
        addrs = [IPv4(a) for a in self.resolved.get(name, ()) if self.addr_allowed(IPv4(a), port)]
        if not addrs:
            refused = self.refused.get(name, ())
            raise denied(f"{name} has no permitted address" + (f" (refused answers: {', '.join(refused)})"
                                                                 if refused else " (not resolved)"),
                         host=name, port=port)
        return addrs

    def nft_elements(self) -> list[tuple[str, int]]:
        """(cidr, port) pairs for the nftables allow set (deduplicated, sorted)."""
        out: set[tuple[str, int]] = set()
        for e in self.entries:
            if e.net is not None:
                out.add((str(e.net), e.port))
            elif e.host:
                for a in self.resolved.get(e.host, ()):
                    if not self.forbidden.reason(IPv4(a)):
                        out.add((f"{a}/32", e.port))
        return sorted(out)

    def to_view(self) -> dict[str, Any]:
        """JSON view handed to the sandbox child (ctx.extra["egress"])."""
        return {"entries": [e.raw for e in self.entries],
                "resolved": {k: list(v) for k, v in self.resolved.items()},
                "refused": {k: list(v) for k, v in self.refused.items()},
                "forbidden": [str(n) for n in self.forbidden.nets]}

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> Allowlist:
        entries, _ = parse_entries(view.get("entries") or [])
        fb = view.get("forbidden")
        forbidden = Forbidden(tuple(Net4(n) for n in fb)) if fb else Forbidden()
        return cls(tuple(entries), {k: tuple(v) for k, v in (view.get("resolved") or {}).items()},
                   {k: tuple(v) for k, v in (view.get("refused") or {}).items()}, forbidden)


def split_answers(forbidden: Forbidden, entries: Iterable[Entry], host: str,
                  answers: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DNS answers for `host` -> (allowed, refused). Forbidden-range answers are refused unless an
    explicit ip/cidr entry covers them for a port this host is listed with."""
    ents = list(entries)
    ports = {e.port for e in ents if e.host == host}
    ok: list[str] = []
    bad: list[str] = []
    for a in answers:
        ip = parse_ipv4(a)
        if ip is None:
            continue
        explicit = any(e.net is not None and ip in e.net and e.port in ports for e in ents)
        (bad if forbidden.reason(ip) and not explicit else ok).append(str(ip))
    return tuple(sorted(set(ok))), tuple(sorted(set(bad)))
