"""Pure builders of the nftables JSON rulesets (no I/O; loaded by stockade.egress.manager).

Two tables, both replaced atomically (add + delete + add in one transaction, so a reload never
leaves a window without rules):

* inside each agent's namespace, `inet stockade_egress`: output policy drop; `lo` accepted;
  DNS (udp/tcp 53) only to the configured resolver; TCP only to `ip daddr . tcp dport @allow`
  (checked on every packet, so removing an address cuts live connections); everything else
  rejected at once (admin-prohibited) so callers fail fast. Input: lo, established/related,
  nothing else. IPv6: dropped (no address is ever configured).
* on the host, `inet stockade_egress_<hometag>`: the same allow set per agent on the forward
  path (defence in depth: holds even if the namespace table were gone), nothing from an agent's
  veth to the host itself (its loopback services, its addresses) unless explicitly listed,
  nothing new into an agent's veth, masquerade of agent traffic leaving the host, and - only if
  stockade had to switch ip_forward on - a guard dropping every other forwarded packet, so the
  host forwards nothing it did not forward before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NS_TABLE = "stockade_egress"
VETH_GLOB = "stkv*"


def _elem(cidr: str, port: int) -> dict[str, Any]:
    addr, _, plen = cidr.partition("/")
    a: Any = addr if plen in ("", "32") else {"prefix": {"addr": addr, "len": int(plen)}}
    return {"concat": [a, port]}


def _set(table: str, name: str, elements: list[tuple[str, int]]) -> list[dict[str, Any]]:
    cmds: list[dict[str, Any]] = [{"add": {"set": {"family": "inet", "table": table, "name": name,
                                                   "type": ["ipv4_addr", "inet_service"], "flags": ["interval"]}}}]
    if elements:
        cmds.append({"add": {"element": {"family": "inet", "table": table, "name": name,
                                         "elem": [_elem(c, p) for c, p in elements]}}})
    return cmds


def _rule(table: str, chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": "inet", "table": table, "chain": chain, "expr": list(expr)}}}


def _chain(table: str, name: str, hook: str | None = None, prio: int = 0, policy: str = "accept",
           ctype: str = "filter") -> dict[str, Any]:
    c: dict[str, Any] = {"family": "inet", "table": table, "name": name}
    if hook:
        c.update(type=ctype, hook=hook, prio=prio, policy=policy)
    return {"add": {"chain": c}}


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _p(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


ACCEPT = {"accept": None}
DROP = {"drop": None}
REJECT = {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}
CT_EST = _m({"ct": {"key": "state"}}, ["established", "related"], "in")
ALLOW_MATCH = _m({"concat": [_p("ip", "daddr"), _p("tcp", "dport")]}, "@allow")


def _replace_table(table: str) -> list[dict[str, Any]]:
    t = {"table": {"family": "inet", "name": table}}
    return [{"add": t}, {"delete": t}, {"add": t}]


def _dns_rules(table: str, chain: str, resolver: str | None, *pre: dict[str, Any]) -> list[dict[str, Any]]:
    if not resolver:
        return []
    return [_rule(table, chain, *pre, _m(_p("ip", "daddr"), resolver), _m(_p(proto, "dport"), 53), ACCEPT)
            for proto in ("udp", "tcp")]


def ns_ruleset(elements: list[tuple[str, int]], resolver: str | None) -> list[dict[str, Any]]:
    """The ruleset loaded inside an agent's namespace."""
    t = NS_TABLE
    cmds = _replace_table(t)
    cmds += _set(t, "allow", elements)
    cmds += [_chain(t, "output", "output", 0, "drop"), _chain(t, "input", "input", 0, "drop")]
    cmds.append(_rule(t, "output", _m(_meta("oifname"), "lo"), ACCEPT))
    cmds += _dns_rules(t, "output", resolver)
    cmds.append(_rule(t, "output", _m(_meta("nfproto"), "ipv4"), ALLOW_MATCH, {"counter": None}, ACCEPT))
    cmds.append(_rule(t, "output", {"counter": None}, REJECT))
    cmds.append(_rule(t, "input", _m(_meta("iifname"), "lo"), ACCEPT))
    cmds.append(_rule(t, "input", CT_EST, ACCEPT))
    return cmds


@dataclass(frozen=True)
class HostAgent:
    agent: str
    veth: str                         # host end
    address: str                      # the agent's address inside its namespace
    elements: tuple[tuple[str, int], ...]


def host_table(tag: str) -> str:
    return f"stockade_egress_{tag}"


def host_ruleset(tag: str, agents: list[HostAgent], resolver: str | None, guard: bool) -> list[dict[str, Any]]:
    """The host-side table for one data home (all of its egress agents)."""
    t = host_table(tag)
    cmds = _replace_table(t)
    cmds += [_chain(t, "forward", "forward", -5), _chain(t, "input", "input", -5),
             _chain(t, "output", "output", -5), _chain(t, "postrouting", "postrouting", 100, ctype="nat")]
    for i, a in enumerate(agents):
        s = f"a{i}"
        cmds += _set(t, s, list(a.elements))
        allow = _m({"concat": [_p("ip", "daddr"), _p("tcp", "dport")]}, f"@{s}")
        from_a = _m(_meta("iifname"), a.veth)
        to_a = _m(_meta("oifname"), a.veth)
        src = _m(_p("ip", "saddr"), a.address)
        # forward: agent -> world only as allowed (and only from the agent's own address)
        cmds += _dns_rules(t, "forward", resolver, from_a, src)
        cmds.append(_rule(t, "forward", from_a, src, allow, ACCEPT))
        cmds.append(_rule(t, "forward", from_a, {"counter": None}, REJECT))
        cmds.append(_rule(t, "forward", to_a, CT_EST, ACCEPT))
        cmds.append(_rule(t, "forward", to_a, {"counter": None}, DROP))
        # input: agent -> the host itself (loopback services, host addresses): explicit entries only
        cmds += _dns_rules(t, "input", resolver, from_a, src)
        cmds.append(_rule(t, "input", from_a, src, allow, ACCEPT))
        cmds.append(_rule(t, "input", from_a, CT_EST, ACCEPT))
        cmds.append(_rule(t, "input", from_a, {"counter": None}, DROP))
        cmds.append(_rule(t, "output", to_a, CT_EST, ACCEPT))
        tcp_udp = _m(_meta("l4proto"), {"set": ["tcp", "udp"]})
        cmds.append(_rule(t, "output", to_a, _m(_meta("nfproto"), "ipv4"), tcp_udp, DROP))
        cmds.append(_rule(t, "postrouting", src, _m(_meta("oifname"), VETH_GLOB, "!="), {"masquerade": None}))
    if guard:
        cmds.append(_rule(t, "forward", _m(_meta("iifname"), VETH_GLOB, "!="), _m(_meta("oifname"), VETH_GLOB, "!="),
                          DROP))
    return cmds
