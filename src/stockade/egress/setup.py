"""Egress part hooks: start (reconcile + follow policy), stop (tear down), doctor.

`start` builds the namespaces, veths and nftables tables for every active agent whose profile
has egress, then a background task re-reconciles every `egress.poll` seconds (policy hot
reload, agent removal, DNS refresh) and a deep check every 30 s (restores anything deleted
behind our back). A failure to apply is reported as a critical `egress` health layer; the
namespace tables are default-deny, so a failure never opens anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from stockade.core import admin
from stockade.core.admin import AdminCommand
from stockade.core.errors import ConfigError, StockadeError, err
from stockade.core.home import Home
from stockade.core.wiring import Gateway
from stockade.egress import netns, nft, ruleset
from stockade.egress.manager import Egress, active_agents, child_view, load_settings, read_egress_from_files
from stockade.egress.rules import parse_entries

DEEP_EVERY = 30.0


NETWORK_CAPABILITIES = frozenset({"network.http_request", "network.dns_lookup", "network.port_check"})
VIEW_ARG = "_egress"


class ViewInjector:
    """Wraps the sandbox executor hook: a network.* call carries the agent's checked allowlist view
    (entries, addresses resolved and filtered at policy load, forbidden ranges, resolver) into
    the sandbox child as the private argument `_egress`.

    Safe because the pipeline validates and audits the agent's arguments *before* the executor
    runs: an agent cannot supply `_egress` itself (additionalProperties: false) and the view never
    lands in the audit log. The handler pops it before doing anything else.
    """

    def __init__(self, inner: Any, home: Home):
        self.inner = inner
        self.home = home

    async def run(self, caller: Any, definition: Any, args: dict[str, Any], call_id: str) -> dict[str, Any]:
        if definition.name in NETWORK_CAPABILITIES and definition.pack is None:
            view = child_view(self.home, caller.agent)
            if view is not None:
                args = {**args, VIEW_ARG: view}
        return await self.inner.run(caller, definition, args, call_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _policy_egress(gw: Gateway) -> Callable[[str], list[str]]:
    """agent -> its egress list, from the policy engine in force at each call (a hot reload or a
    swapped engine is always the one asked), or from the policy files when no engine runs."""

    def source(agent: str) -> list[str]:
        if gw.policy is None:
            return read_egress_from_files(gw.home, agent)
        return [str(x) for x in ((gw.policy.sandbox_profile(agent) or {}).get("egress") or [])]

    return source


async def start(gw: Gateway) -> None:
    settings = load_settings(gw.home)
    eg = Egress(gw.home, settings, _policy_egress(gw))
    gw.egress = eg
    gw.pipeline.sandbox = ViewInjector(gw.pipeline.sandbox, gw.home)
    await _run(gw, eg, deep=True)
    gw.tasks.append(asyncio.create_task(_loop(gw, eg), name="egress-reconcile"))


async def _run(gw: Gateway, eg: Egress, **kw: Any) -> dict[str, Any] | None:
    try:
        changes = await asyncio.to_thread(eg.reconcile, **kw)
        gw.pipeline.health["egress"] = {"status": "ok", "agents": len(eg.agents), "resolver": eg.settings.resolver,
                                        **({"repairs": eg.repairs[-5:]} if eg.repairs else {})}
        if changes and changes.get("repaired"):   # rules vanished underneath us: restored, and said so
            gw.bus.publish("egress.repaired", {"repaired": changes["repaired"]}, "critical")
        if changes and any(changes.values()):
            gw.bus.publish("egress.changed", changes)
            # the owner can see in the audit log when an agent's network reach changed
            await gw.pipeline.record_event("egress.changed", **changes,
                                           reach={a: eg.status().get(a, {}).get("elements", [])
                                                  for a in changes["added"] + changes["updated"]})
        return changes
    except (StockadeError, nft.NftError, OSError, ConfigError) as e:
        msg = getattr(e, "message", None) or str(e)
        eg.last_error = msg
        gw.pipeline.health["egress"] = {"status": "critical", "error": msg[:500]}
        gw.bus.publish("egress.error", {"error": msg[:500]}, "critical")
        return None


async def _loop(gw: Gateway, eg: Egress) -> None:
    last_deep = time.monotonic()
    while gw.stopping is None or not gw.stopping.is_set():
        await asyncio.sleep(eg.settings.poll)
        deep = time.monotonic() - last_deep > DEEP_EVERY
        if deep:
            last_deep = time.monotonic()
        await _run(gw, eg, deep=deep)


async def stop(gw: Gateway) -> None:
    eg, gw.egress = gw.egress, None
    if isinstance(gw.pipeline.sandbox, ViewInjector):
        gw.pipeline.sandbox = gw.pipeline.sandbox.inner
    for t in list(gw.tasks):
        if t.get_name() == "egress-reconcile":
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
            gw.tasks.remove(t)
    if eg is not None:
        await asyncio.to_thread(eg.teardown)


def _egress(gw: Gateway) -> Egress:
    if gw.egress is None:
        raise err("Internal", "egress is not running")
    return gw.egress


async def _reload(gw: Gateway, args: dict[str, Any]) -> Any:
    eg = _egress(gw)
    changes = await _run(gw, eg, force_resolve=True, deep=True)
    return {"changes": changes, "error": None if changes is not None else eg.last_error}


async def _status(gw: Gateway, args: dict[str, Any]) -> Any:
    eg = _egress(gw)
    return {"agents": eg.status(), "guard": eg.guard, "resolver": eg.settings.resolver}


ADMIN_COMMANDS = {"egress.reload": AdminCommand(_reload), "egress.status": AdminCommand(_status)}


def doctor(home: Home) -> dict[str, Any]:
    """`egress`: libnftables, resolver, and per agent: namespace, veth, rules loaded, addresses."""
    ok, detail = nft.available()
    if not ok:
        return {"egress": {"status": "critical", "error": f"libnftables not loadable: {detail}"}}
    try:
        settings = load_settings(home)
    except ConfigError as e:
        return {"egress": {"status": "critical", "errors": e.errors}}
    running = admin.running(home)
    out: dict[str, Any] = {"status": "ok", "resolver": settings.resolver, "gateway_running": running,
                           "root": os.geteuid() == 0, "agents": {}}
    try:
        names = active_agents(home)
    except Exception as e:  # no db yet
        return {"egress": {"status": "degraded", "error": f"cannot list agents: {e}"}}
    tag = netns.home_tag(home)
    host_loaded = _table_loaded(None, ruleset.host_table(tag))
    out["host_table"] = host_loaded
    problems = []
    for a in names:
        try:
            items = read_egress_from_files(home, a)
        except ConfigError as e:
            out["agents"][a] = {"error": e.errors}
            continue
        path = netns.netns_path(home, a)
        live = netns.is_netns(path)
        view = child_view(home, a) or {}
        _, bad = parse_entries(items)
        info: dict[str, Any] = {
            "egress": items,
            **({"invalid": bad} if bad else {}),
            "netns": path if live else None,
            "rules_loaded": _table_loaded(path, ruleset.NS_TABLE) if live else False,
            "resolved": view.get("resolved", {}),
            "refused": view.get("refused", {}),
        }
        out["agents"][a] = info
        if running and items and not (info["netns"] and info["rules_loaded"] and host_loaded):
            problems.append(a)
    if problems:
        out["status"] = "degraded"
        out["error"] = f"egress rules missing for: {', '.join(problems)}"
    return {"egress": out}


def _table_loaded(path: str | None, table: str) -> bool:
    try:
        nft.run_in_netns(path, [nft.list_table(table)])
        return True
    except (nft.NftError, OSError):
        return False
