"""Upstream wiring: at start, discover each configured server's tools in its sandbox and register
them as capabilities (`NAME.tool`, execution `upstream`) whose implementation calls the server
through the supervisor; keep `system.health` truthful; announce tool-list changes; stop every
server at shutdown. Admin commands: `upstream.status`, `upstream.restart`, `upstream.logs`,
`upstream.reload` (what the CLI uses against a running gateway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stockade.audit.redact import SecretValue
from stockade.core.admin import AdminCommand
from stockade.core.errors import ConfigError, StockadeError, err
from stockade.core.home import Home, write_private
from stockade.core.wiring import Gateway
from stockade.sandbox import leftovers
from stockade.upstream import config, confine, tools
from stockade.upstream.supervisor import Supervisor
from stockade.vault.refs import REF, encodings

log = logging.getLogger("stockade.upstream")
DEFAULT_HOST_UID = 100_000
_SUPERVISORS: dict[int, Supervisor] = {}       # id(gateway) -> its supervisor


def supervisor(gw: Gateway) -> Supervisor | None:
    return _SUPERVISORS.get(id(gw))


def _uid_of(gw: Gateway, base: int) -> Callable[[str], int]:
    """An agent's sandbox host uid: the same the per-call sandbox gives it (base + agent row)."""

    def uid(agent: str) -> int:
        row = gw.pipeline.db.execute("SELECT rowid FROM agents WHERE name=? AND revoked_at IS NULL",
                                     (agent,)).fetchone()
        if row is None:
            raise err("SandboxUnavailable", f"agent {agent!r} has no sandbox identity")
        return base + int(row[0])

    return uid


def _env_of(gw: Gateway) -> Callable[[str, str, config.ServerConfig], tuple[dict[str, str], list[str]]]:
    """A server's environment (a url server: its HTTP headers) with `${secret:NAME}` resolved from
    the vault (scope `upstream.<server>`, bound to the instance's agent). Discovery instances (no
    agent) get only secrets bound to every agent; a placeholder they may not have leaves its
    variable (header) unset."""

    def env(server: str, agent: str, cfg: config.ServerConfig) -> tuple[dict[str, str], list[str]]:
        names, given = cfg.secret_names(), cfg.given()
        if not names:
            return dict(given), []
        vault = gw.vault
        if vault is None or vault.sealed:
            if agent == confine.DISCOVERY:
                return {k: v for k, v in given.items() if not REF.search(v)}, []
            raise err("VaultSealed", f"upstream server {server} needs secrets and the vault is sealed")
        try:
            values = vault.values_for(agent, f"upstream.{server}", names)
        except StockadeError:
            if agent != confine.DISCOVERY:
                raise
            return {k: v for k, v in given.items() if not REF.search(v)}, []
        out = {k: REF.sub(lambda m: values[m.group(1)], v) for k, v in given.items()}
        # each value and its encodings, named: what the server says back shows ${secret:NAME}
        return out, [SecretValue(e, n) for n, v in values.items() for e in encodings(v)]

    return env


def _pack_launch(gw: Gateway) -> Callable[[str, config.ServerConfig], tuple[config.ServerConfig, tuple[Any, ...]]]:
    """A `pack:` server, at each start: the installed pack (its publisher still trusted, else
    PackSignatureInvalid), its pack.yaml's `mcp_server` entry and egress, and the command that
    verifies and runs it inside the sandbox (`upstream.packserver` under this interpreter, which
    sees its own code read-only and the pack read-only at PACK_DIR)."""
    from stockade.packs import store
    from stockade.packs.manifest import parse_pack_yaml
    from stockade.sandbox.longlived import Bind
    from stockade.upstream.packserver import INFO_ENV, PACK_DIR

    def launch(server: str, cfg: config.ServerConfig) -> tuple[config.ServerConfig, tuple[Any, ...]]:
        pk = gw.packs.get(cfg.pack or "")
        if pk is None:
            raise err("SandboxUnavailable", f"upstream server {server}: pack {cfg.pack!r} is not installed")
        try:
            spec = parse_pack_yaml((pk.path(gw.home) / "pack.yaml").read_text(encoding="utf-8"))
        except (OSError, ConfigError) as e:
            raise err("PackSignatureInvalid", f"pack.yaml: {e}"[:300]) from None
        if spec.mcp_server is None:
            raise err("SandboxUnavailable", f"upstream server {server}: pack {pk.name} declares no mcp_server")
        info = store.runner_info(gw.home, gw.pipeline.db, pk, {})
        host = info.pop("host_path")
        info.update(dir=PACK_DIR, entry=spec.mcp_server.entry)
        have = {f.path for f in cfg.filesystem}
        code = [config.FsEntry(path=d) for d in _own_code() if d not in have]
        run = cfg.model_copy(update={
            "command": sys.executable, "args": ["-I", "-B", "-m", "stockade.upstream.packserver"],
            "env": {**cfg.env, INFO_ENV: json.dumps(info)}, "egress": list(spec.sandbox.egress),
            "filesystem": [*cfg.filesystem, *code]})
        return run, (Bind(host, True, PACK_DIR),)

    return launch


def _own_code() -> list[str]:
    """What this interpreter needs to run stockade's code: its venv, the Python it was made from,
    and the source tree of a development (editable) install."""
    from stockade.sandbox.longlived import check_bind

    src = str(Path(__file__).resolve().parents[2])
    return sorted({*config.runtime_dirs(sys.executable), *([src] if check_bind(src) is None else [])})


def _publish(gw: Gateway) -> Callable[[], None]:
    def publish() -> None:
        sup = supervisor(gw)
        if sup is not None:
            gw.pipeline.health["upstream"] = {**sup.health(), "skipped": _SKIPPED.get(id(gw), {}),
                                              **({"leftovers": _LEFTOVERS[id(gw)]} if id(gw) in _LEFTOVERS else {})}
    return publish


_SKIPPED: dict[int, dict[str, Any]] = {}


def _impl(sup: Supervisor, server: str, tool: str) -> Callable[..., Any]:
    async def call(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return await sup.call(server, tool, ctx.caller.agent, args)
    return call


async def register(gw: Gateway, sup: Supervisor, server: str,
                   listed: list[dict[str, Any]] | None = None) -> list[str]:
    """Put `server`'s tools (`listed`, else discovered now) in the registry; returns their names."""
    reg = gw.pipeline.registry
    skipped = _SKIPPED.setdefault(id(gw), {})
    builtin = {d.name.split(".", 1)[0] for d in reg.all() if not d.source.startswith("upstream:")}
    if server in builtin:
        skipped[server] = [f"server name {server!r} is a built-in or pack namespace"]
        return []
    try:
        listed = listed if listed is not None else await sup.discover(server)
    except StockadeError as e:
        skipped[server] = [f"discovery failed: {e.message}"[:300]]
        reg.remove([d.name for d in reg.all() if d.source == f"upstream:{server}"])
        return []
    m = tools.mirror(server, listed)
    reg.remove([d.name for d in reg.all() if d.source == f"upstream:{server}"])
    reg.add(list(m.definitions), {d.name: _impl(sup, server, m.tool_of[d.name]) for d in m.definitions})
    skipped[server] = list(m.skipped)
    _snapshot(gw)
    return [d.name for d in m.definitions]


SNAPSHOT = "upstream-tools.json"


def _snapshot(gw: Gateway) -> None:
    """What offline commands (`policy explain`) know of upstream tools, as last discovered: each
    tool's argument names and whether its server says it only reads (run/upstream-tools.json)."""
    out = {d.name: {"read_only": not d.side_effects, "args": sorted(d.input_schema.get("properties") or {})}
           for d in gw.pipeline.registry.all() if d.source.startswith("upstream:")}
    try:
        write_private(gw.home.run / SNAPSHOT, json.dumps({"tools": out}, sort_keys=True))
    except OSError as e:
        log.warning("upstream: the tool snapshot for offline commands could not be written: %s", e)


def known_tools(home: Home) -> dict[str, tuple[bool, frozenset[str]]]:
    """The snapshot: capability -> (its server says it only reads, its argument names). Anything
    malformed is left out (an unknown tool is explained as the policy treats any unnamed one)."""
    try:
        data = json.loads((home.run / SNAPSHOT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = data.get("tools") if isinstance(data, dict) else None
    return {name: (v["read_only"] is True, frozenset(str(a) for a in v["args"]))
            for name, v in (found.items() if isinstance(found, dict) else ())
            if isinstance(v, dict) and isinstance(v.get("args"), list) and "read_only" in v}


def prefork(gw: Gateway) -> None:
    """Before anything is built: what a killed gateway of this home left of its upstream servers
    (the `stockade-upstream/<tag>` cgroup tree; their namespaces `stockade-<tag>-<agent>.up-<server>`
    and `stockade-upd-<tag>` with the sandbox part's sweep, again here when that part is off) is
    reclaimed, so no stale cgroup limit or namespace outlives the crash. The processes died with
    the gateway (each launcher has a parent-death signal); the cgroup sweep kills any straggler."""
    _LEFTOVERS[id(gw)] = leftovers.reclaim(gw.home, [confine.CGROUP_PARENT]).health()


_LEFTOVERS: dict[int, dict[str, Any]] = {}


async def start(gw: Gateway) -> None:
    try:
        servers = config.load(gw.home)
    except ConfigError as e:
        gw.pipeline.health["upstream"] = {"status": "critical", "error": "; ".join(e.errors)[:500]}
        raise
    base = gw.sandbox.host_uid if gw.sandbox is not None else DEFAULT_HOST_UID

    async def tools_changed(server: str, listed: list[dict[str, Any]]) -> None:
        before = {d.name for d in gw.pipeline.registry.all() if d.source == f"upstream:{server}"}
        after = await register(gw, sup, server, listed)
        await gw.pipeline.record_event("upstream.tools_changed", server=server,
                                       added=sorted(set(after) - before), removed=sorted(before - set(after)))
        _publish(gw)()
        if gw.tools_changed is not None:
            await gw.tools_changed()

    sup = Supervisor(gw.home, servers, uid_of=_uid_of(gw, base), base_uid=base, env_of=_env_of(gw),
                     egress=lambda: gw.egress, on_change=_publish(gw), on_tools_changed=tools_changed,
                     pack_launch=_pack_launch(gw))
    _SUPERVISORS[id(gw)] = sup
    found = await asyncio.gather(*(register(gw, sup, name) for name in servers))
    _publish(gw)()
    gw.tasks.append(asyncio.create_task(_on_events(gw, sup), name="upstream-events"))
    failed = [n for n, names in zip(servers, found, strict=True) if not names]
    if failed:
        gw.tasks.append(asyncio.create_task(_rediscover(gw, sup, failed), name="upstream-rediscover"))


async def _on_events(gw: Gateway, sup: Supervisor) -> None:
    """A revoked agent's server instances stop at once (its calls are refused anyway; its
    processes, namespace and cgroup should not outlive the key). When the egress part's answer
    for a host name changes, the instances allowed that name get the new addresses in their
    /etc/hosts (the rules already let exactly those through)."""
    sub = gw.bus.subscribe()
    try:
        while not sup.stopping:
            ev = await sub.get(timeout=1.0)
            if ev is not None and ev.kind == "agent.revoked" and isinstance(ev.data.get("agent"), str):
                await sup.stop_agent(ev.data["agent"])
            elif ev is not None and ev.kind == "egress.changed":
                changed = {str(p) for k in ("added", "updated") for p in ev.data.get(k) or []}
                await asyncio.to_thread(_refresh_hosts, gw, sup, changed)
    finally:
        sub.close()


def _refresh_hosts(gw: Gateway, sup: Supervisor, principals: set[str]) -> None:
    for (server, agent), inst in list(sup.instances.items()):
        if agent == confine.DISCOVERY or inst.placement is None or not inst.placement.spec.hosts_file:
            continue
        if f"{agent}.{confine.principal_pack(server)}" in principals:
            try:
                confine.write_hosts(gw.home, gw.egress, agent, server)
            except OSError as e:
                log.warning("upstream %s for %r: its hosts file could not be rewritten: %s", server, agent, e)


async def _rediscover(gw: Gateway, sup: Supervisor, failed: list[str]) -> None:
    """Servers whose tools could not be listed at start are tried again (backoff to 5 min);
    agents hear of their tools through tools/list_changed."""
    delay = 5.0
    while failed and not sup.stopping:
        await asyncio.sleep(delay)
        delay = min(300.0, delay * 2)
        got = [n for n in failed if n in sup.servers and await register(gw, sup, n)]
        failed = [n for n in failed if n not in got and n in sup.servers]
        _publish(gw)()
        if got and gw.tools_changed is not None:
            await gw.tools_changed()


async def stop(gw: Gateway) -> None:
    sup = _SUPERVISORS.pop(id(gw), None)
    if sup is not None:
        await sup.stop()
        gw.pipeline.registry.remove([d.name for d in gw.pipeline.registry.all() if d.source.startswith("upstream:")])
    _SKIPPED.pop(id(gw), None)
    _LEFTOVERS.pop(id(gw), None)


# -- admin commands (the CLI against a running gateway) ------------------------------------------
def _sup(gw: Gateway) -> Supervisor:
    sup = supervisor(gw)
    if sup is None:
        raise err("Internal", "upstream servers are not running in this gateway")
    return sup


def _server_arg(sup: Supervisor, args: dict[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str) or name not in sup.servers:
        raise err("InvalidInput", f"no upstream server named {name!r}")
    return name


async def _status(gw: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return _sup(gw).health()


async def _restart(gw: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    sup = _sup(gw)
    name = _server_arg(sup, args)
    stopped = await sup.restart(name)
    await gw.pipeline.record_event("upstream.restarted", server=name, instances=stopped)
    return {"server": name, "stopped": stopped}


async def _logs(gw: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    sup = _sup(gw)
    return {"server": (name := _server_arg(sup, args)), "logs": sup.logs(name)}


async def _reload(gw: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    """Re-read upstream.yaml: removed servers stop and lose their tools, others are rediscovered."""
    sup = _sup(gw)
    servers = config.load(gw.home)
    for gone in set(sup.servers) - set(servers):
        await sup.restart(gone)
        gw.pipeline.registry.remove([d.name for d in gw.pipeline.registry.all() if d.source == f"upstream:{gone}"])
        _snapshot(gw)
    changed = [n for n in servers if sup.servers.get(n) != servers[n]]
    for n in changed:
        await sup.restart(n)
    sup.servers = servers
    for n in changed:
        await register(gw, sup, n)
    if gw.tools_changed is not None:
        await gw.tools_changed()
    await gw.pipeline.record_event("upstream.reloaded", servers=sorted(servers), changed=sorted(changed))
    _publish(gw)()
    return {"servers": sorted(servers), "changed": sorted(changed)}


ADMIN_COMMANDS = {
    "upstream.status": AdminCommand(_status),
    "upstream.restart": AdminCommand(_restart),
    "upstream.logs": AdminCommand(_logs),
    "upstream.reload": AdminCommand(_reload),
}


def doctor(home: Home) -> dict[str, Any]:
    try:
        servers = config.load(home)
    except ConfigError as e:
        return {"upstream": {"status": "critical", "errors": e.errors[:10]}}
    missing = sorted(n for n, s in servers.items() if s.command is not None and not os.access(s.command, os.X_OK))
    return {"upstream": {"status": "degraded" if missing else "ok", "servers": sorted(servers),
                         **({"missing_command": missing} if missing else {})}}
