"""The perimeter's nftables ruleset as pure data, applied through libnftables' JSON API.

The binding (`Nft`, `NftError`) is `stockade.egress.nft`'s, one for the project. Why a ctypes
shim: the venv's Python is not Debian's, so Debian's `python3-nftables` (itself a thin ctypes
wrapper) is not importable, and PyPI has no maintained binding we could hash-pin.
libnftables.so.1 (Debian's libnftables1) exposes five C functions we need; JSON in, JSON out,
one atomic transaction per call, no `nft` subprocess and no text parsing.

The table `inet stockade_perimeter`:
- input chain, policy drop: loopback, established/related and IPv6 neighbour discovery are
  accepted; new connections only for `saddr . l4proto . dport` in the timed allow sets that SPA
  grants fill (the kernel expires elements: a dead daemon cannot leak an open door); the SPA UDP
  port is accepted under a per-source and a global rate limit.
- output chain: ICMP port-unreachable is dropped, so a stopped daemon does not betray itself.
The table is replaced atomically at start and deleted only on clean shutdown: after a crash the
drop policy stays.
"""

from __future__ import annotations

import contextlib
from typing import Any

from stockade.egress.nft import Nft, NftError
from stockade.perimeter.codec import IPAddress, Port

__all__ = ["TABLE", "Firewall", "Nft", "NftError", "grant_elements", "ruleset"]

TABLE = "stockade_perimeter"
# -- pure ruleset construction ----------------------------------------------------------------

def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def ruleset(spa_port: int, *, table: str = TABLE, rate_per_source: float = 20.0,
            rate_total: float = 5000.0) -> list[dict[str, Any]]:
    """The JSON batch that atomically (re)creates the table. Pure."""
    t = {"family": "inet", "table": table}
    per_src = max(1, int(rate_per_source))
    total = max(1, int(rate_total))

    def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {**t, "chain": chain, "expr": list(expr)}}}

    accept, drop = {"accept": None}, {"drop": None}
    ct_state = {"ct": {"key": "state"}}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": "inet", "name": table}}},   # so that delete cannot fail
        {"delete": {"table": {"family": "inet", "name": table}}},
        {"add": {"table": {"family": "inet", "name": table}}},
    ]
    for fam, addr in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        cmds.append({"add": {"set": {**t, "name": f"allow{fam}", "type": [addr, "inet_proto", "inet_service"],
                                     "flags": ["timeout"]}}})
        cmds.append({"add": {"set": {**t, "name": f"meter{fam}", "type": addr, "flags": ["timeout"],
                                     "timeout": 60, "size": 65535}}})
    cmds += [
        {"add": {"chain": {**t, "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}},
        {"add": {"chain": {**t, "name": "output", "type": "filter", "hook": "output", "prio": 0,
                           "policy": "accept"}}},
        rule("input", _match({"meta": {"key": "iif"}}, "lo"), accept),
        rule("input", _match(ct_state, ["established", "related"], "in"), accept),
        rule("input", _match(ct_state, "invalid", "in"), drop),
    ]
    for fam, proto in (("4", "ip"), ("6", "ip6")):
        cmds.append(rule("input", _match({"concat": [_payload(proto, "saddr"), {"meta": {"key": "l4proto"}},
                                                     _payload("th", "dport")]}, f"@allow{fam}"),
                         _match(ct_state, "new", "in"), accept))
    cmds.append(rule("input", _match(_payload("icmpv6", "type"),
                                     {"set": ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert"]}),
                     accept))
    for fam, proto in (("4", "ip"), ("6", "ip6")):
        cmds.append(rule("input", _match(_payload("udp", "dport"), spa_port),
                         {"set": {"op": "update", "elem": _payload(proto, "saddr"), "set": f"@meter{fam}",
                                  "stmt": [{"limit": {"rate": per_src, "burst": per_src * 2, "per": "second",
                                                      "inv": True}}]}},
                         drop))
    cmds.append(rule("input", _match(_payload("udp", "dport"), spa_port),
                     {"limit": {"rate": total, "burst": total, "per": "second"}}, accept))
    cmds.append(rule("output", _match(_payload("icmp", "type"), "destination-unreachable"),
                     _match(_payload("icmp", "code"), "port-unreachable"), drop))
    cmds.append(rule("output", _match(_payload("icmpv6", "type"), "destination-unreachable"),
                     _match(_payload("icmpv6", "code"), "port-unreachable"), drop))
    return cmds


def grant_elements(ip: IPAddress, ports: tuple[Port, ...], seconds: int, *, table: str = TABLE
                   ) -> list[dict[str, Any]]:
    """Add (or refresh: add, delete, add in one transaction) timed allow-set elements. Pure."""
    name = f"allow{ip.version}"
    elems = [{"concat": [str(ip), p.proto, p.port]} for p in ports]
    timed = [{"elem": {"val": e, "timeout": int(seconds)}} for e in elems]
    target = {"family": "inet", "table": table, "name": name}
    return [{"add": {"element": {**target, "elem": timed}}},
            {"delete": {"element": {**target, "elem": elems}}},
            {"add": {"element": {**target, "elem": timed}}}]


class Firewall:
    """The imperative shell around `ruleset` and `grant_elements`."""

    def __init__(self, nft: Nft | None = None, table: str = TABLE):
        self.nft = nft or Nft()
        self.table = table

    def install(self, spa_port: int, rate_per_source: float = 20.0, rate_total: float = 5000.0) -> None:
        self.nft.run(ruleset(spa_port, table=self.table, rate_per_source=rate_per_source, rate_total=rate_total))

    def grant(self, ip: IPAddress, ports: tuple[Port, ...], seconds: int) -> None:
        self.nft.run(grant_elements(ip, ports, seconds, table=self.table))

    def remove(self) -> None:
        with contextlib.suppress(NftError):
            self.nft.run([{"delete": {"table": {"family": "inet", "name": self.table}}}])

    def exists(self) -> bool:
        try:
            self.nft.run([{"list": {"table": {"family": "inet", "name": self.table}}}])
        except NftError:
            return False
        return True

    def grants(self) -> list[dict[str, Any]]:
        """Active allow-set elements: [{ip, proto, port, timeout, expires}]."""
        out = []
        for fam in ("4", "6"):
            res = self.nft.run([{"list": {"set": {"family": "inet", "table": self.table, "name": f"allow{fam}"}}}])
            for item in res.get("nftables", []):
                for el in item.get("set", {}).get("elem", []) or []:
                    e = el.get("elem", el) if isinstance(el, dict) else el
                    val = e.get("val", e) if isinstance(e, dict) else e
                    ip, proto, port = val["concat"]
                    out.append({"ip": ip, "proto": proto, "port": port, "timeout": e.get("timeout"),
                                "expires": e.get("expires")})
        return out
