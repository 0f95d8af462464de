"""What conditions need to know beyond the call's arguments, declared elsewhere and read here.

- `PathScope`: which path arguments a capability acts *below* (recursive listing and search,
  moving, copying or deleting a directory), declared per capability in its definition
  (`acts_below:`), plus the schema defaults of its arguments (an omitted `path` of
  `filesystem.search_content` is ".", the whole workspace). `path_touches` uses it so that
  acting on an ancestor of a protected path touches it.
- `Reach`: the addresses an agent's egress allowlist resolves its hostnames to, and its explicit
  ip/cidr entries (the egress part's view). `url_host_in` uses it to decide on what a request
  will connect to (an IP literal is matched as the hostname that resolved to it; a redirect may
  go anywhere the agent may reach).

`Facts` bundles both lookups. Policies are compiled against one `Facts`; its lookups are live
(a pack registered later, a DNS refresh), cheap, and never raise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # the egress part's allowlist, read for its entries (policy imports only core)
    from stockade.egress.rules import Allowlist


@dataclass(frozen=True)
class PathScope:
    """A capability's path arguments: which act below their path, and the schema defaults."""

    below: Mapping[str, bool | str] = field(default_factory=dict)   # arg -> True, or a boolean arg's name
    defaults: Mapping[str, Any] = field(default_factory=dict)       # argument -> schema default

    def subtree(self, arg: str, args: Mapping[str, Any]) -> bool:
        """Does this call act on everything below `arg`'s path? Anything but an explicit false
        flag counts as yes (a malformed flag is refused later by the schema, never loosened here)."""
        when = self.below.get(arg)
        if when is None or when is False:
            return False
        if when is True:
            return True
        return args.get(when, self.defaults.get(when, False)) is not False


# The arguments path conditions read unless a rule names others (`path_args`).
PATH_ARGS = ("path", "source", "destination", "cwd")


def scope_of_definition(acts_below: Mapping[str, bool | str], input_schema: Mapping[str, Any]) -> PathScope:
    """A definition's declaration + the schema defaults of its path arguments and scope flags."""
    props = input_schema.get("properties")
    keep = set(PATH_ARGS) | set(acts_below) | {w for w in acts_below.values() if isinstance(w, str)}
    defaults = {k: v["default"] for k, v in props.items()
                if k in keep and isinstance(v, dict) and "default" in v} if isinstance(props, dict) else {}
    return PathScope(dict(acts_below), defaults)


# The built-in capabilities' scopes, for when no registry is at hand (offline validation, tests).
# tests/policy keeps this equal to what the definitions declare.
BUILTIN_SCOPES: dict[str, PathScope] = {
    "filesystem.list": PathScope({"path": "recursive"}, {"path": ".", "recursive": False}),
    "filesystem.search": PathScope({"path": True}, {"path": "."}),
    "filesystem.search_content": PathScope({"path": True}, {"path": "."}),
    "filesystem.delete": PathScope({"path": "recursive"}, {"recursive": False}),
    "filesystem.move": PathScope({"source": True, "destination": True}, {}),
    "filesystem.copy": PathScope({"source": "recursive", "destination": "recursive"}, {"recursive": False}),
    "filesystem.restore": PathScope({"path": True, "destination": True}, {}),
    "process.run": PathScope({}, {"cwd": "."}),
}


def builtin_scope(capability: str) -> PathScope | None:
    return BUILTIN_SCOPES.get(capability)


@dataclass(frozen=True)
class Reach:
    """Where an agent's requests can go: hostname -> the addresses it resolved to (and that egress
    allows), and the explicit ip/cidr entries."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    nets: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def of(cls, allow: Allowlist) -> Reach:
        names = {e.host: tuple(allow.resolved.get(e.host, ())) for e in allow.entries if e.host}
        return cls(names, tuple(e.net for e in allow.entries if e.net is not None))

    def names_for(self, ip: str) -> set[str]:
        return {n for n, addrs in self.names.items() if ip in addrs}


NO_REACH = Reach()


def _unknown(agent: str) -> Reach | None:
    return None


def _no_hint(capability: str) -> bool:
    return False


@dataclass(frozen=True)
class Facts:
    scope: Callable[[str], PathScope | None] = builtin_scope
    reach: Callable[[str], Reach | None] = _unknown      # None: not known here (offline)
    read_only: Callable[[str], bool] = _no_hint          # an upstream server says the tool only reads


DEFAULT_FACTS = Facts()


def registry_scope(registry: Any) -> Callable[[str], PathScope | None]:
    """A live lookup over a capability registry (packs registered later included)."""
    cache: dict[str, tuple[Any, PathScope]] = {}

    def scope(capability: str) -> PathScope | None:
        if capability not in registry:
            return builtin_scope(capability)
        d = registry.get(capability)
        got = cache.get(capability)
        if got is None or got[0] is not d:        # a re-registered pack brings a new definition
            got = (d, scope_of_definition(dict(getattr(d, "acts_below", ()) or ()), d.input_schema))
            cache[capability] = got
        return got[1]

    return scope


def egress_reach(egress: Callable[[], Any]) -> Callable[[str], Reach]:
    """The agents' reach from the running egress part (`egress()` returns it, or None when it is
    not running: then no agent has network, and its reach is empty). Read-only, in memory."""
    cache: dict[str, tuple[Any, Reach]] = {}

    def reach(agent: str) -> Reach:
        eg = egress()
        st = eg.agents.get(agent) if eg is not None else None
        allow = getattr(st, "allowlist", None)
        if allow is None:
            return NO_REACH
        got = cache.get(agent)
        if got is None or got[0] is not allow:     # the egress part swaps the allowlist on change
            got = (allow, Reach.of(allow))
            cache[agent] = got
        return got[1]

    return reach


def registry_read_only(registry: Any) -> Callable[[str], bool]:
    """A live lookup: is `capability` a tool of an upstream MCP server annotated `readOnlyHint`
    (registered without side effects)? Only upstream tools: built-ins and packs are named by rules."""

    def hint(capability: str) -> bool:
        if capability not in registry:
            return False
        d = registry.get(capability)
        return getattr(d, "execution", None) == "upstream" and getattr(d, "side_effects", True) is False

    return hint


def gateway_facts(gw: Any) -> Facts:
    """Live facts for a running gateway: its registry's scopes and upstream hints, its egress part's reach."""
    reg = gw.pipeline.registry
    return Facts(registry_scope(reg), egress_reach(lambda: gw.egress), registry_read_only(reg))
