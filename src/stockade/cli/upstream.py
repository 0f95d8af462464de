"""`stockade upstream add|list|remove|restart|logs`: MCP servers stockade fronts (docs/upstream.md).

`add` and `remove` edit `<home>/upstream.yaml` and, when a gateway runs on the home, have it
reload the file (the server's tools appear or go, agents are told the list changed);
`restart` and `logs` talk to the running gateway.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import click
from pydantic import ValidationError

from stockade.cli.common import emit, fail, fail_error, home_option, json_option, need_home, sanitize
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.home import Home, write_private
from stockade.upstream import config


def _reload(home: Home) -> dict[str, Any] | None:
    from stockade.core import admin

    if not admin.running(home):
        return None
    result: dict[str, Any] = admin.call(home, "upstream.reload", {}, timeout=300)
    return result


def _admin(home: Home, cmd: str, args: dict[str, Any], as_json: bool) -> Any:
    from stockade.core import admin

    if not admin.running(home):
        fail("no gateway is running on this home (start it with `stockade serve`)", as_json=as_json)
    try:
        return admin.call(home, cmd, args, timeout=120)
    except StockadeError as e:
        fail_error(e, as_json)


def _save(home: Home, servers: dict[str, config.ServerConfig]) -> None:
    text = config.render(servers)
    config.parse(text, str(config.path(home)))     # never write a file the gateway would refuse
    write_private(config.path(home), text)


def upstream_scope(home: Home, scope: str) -> bool:
    """`upstream.NAME` names a declared server: the scope of secrets it is given at start."""
    prefix, _, name = scope.partition(".")
    try:
        return prefix == "upstream" and name in config.load(home)
    except ConfigError:
        return False


@click.group()
def upstream() -> None:
    """MCP servers behind the pipeline, each confined in its own long-lived sandbox."""


@upstream.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--url", help="A Streamable HTTP server already running on loopback (instead of a command).")
@click.option("--pack", "pack", help="An installed signed pack that declares an mcp_server (instead of a command).")
@click.option("--header", "header", multiple=True, help="NAME=VALUE sent to a --url server; VALUE may hold "
              "${secret:NAME} (repeat).")
@click.option("--ro", "ro", multiple=True, help="A host directory it sees read-only (repeat).")
@click.option("--rw", "rw", multiple=True, help="A host directory it may write (repeat).")
@click.option("--egress", multiple=True, help="host:port or cidr:port it may connect to (repeat).")
@click.option("--env", "env", multiple=True, help="NAME=VALUE; VALUE may hold ${secret:NAME} (repeat).")
@click.option("--shared", is_flag=True, help="One instance for every agent (default: one per agent).")
@click.option("--no-runtime-dirs", is_flag=True, help="Do not add the command's venv/prefix read-only.")
@click.option("--replace", is_flag=True, help="Replace a server of the same name.")
@home_option
@json_option
def add(name: str, command: tuple[str, ...], url: str | None, pack: str | None, header: tuple[str, ...],
        ro: tuple[str, ...], rw: tuple[str, ...], egress: tuple[str, ...], env: tuple[str, ...], shared: bool,
        no_runtime_dirs: bool, replace: bool, home: str | None, as_json: bool) -> None:
    """Declare a server: stockade upstream add NAME [options] -- COMMAND ARGS...
    (or, for one already running on loopback: stockade upstream add NAME --url URL;
    for a signed pack's server: stockade upstream add NAME --pack PACK)."""
    h = need_home(home)
    if sum(map(bool, (command, url, pack))) != 1:
        fail("give one of -- COMMAND ARGS..., --url URL or --pack PACK", as_json=as_json)
    if url and (ro or rw or egress or env) or not url and header or pack and egress:
        fail("--ro, --rw, --egress and --env are for a server stockade runs (a pack's egress is its pack.yaml's); "
             "--header for a --url server", as_json=as_json)
    if pack:
        entry: dict[str, Any] = {"pack": pack, "env": _pairs(env, "--env", as_json),
                                 "filesystem": [{"path": d, "mode": m} for m, ds in (("ro", ro), ("rw", rw))
                                                for d in sorted(set(ds))]}
    elif url:
        entry = _http_entry(url, header, as_json)
    else:
        entry = _command_entry(command, ro, rw, egress, env, no_runtime_dirs, as_json)
    entry["instances"] = "shared" if shared else "per-agent"
    try:
        servers = config.load(h)
        if name in servers and not replace:
            fail(f"an upstream server named {name!r} exists (use --replace)", as_json=as_json)
        servers = {**servers, name: config.ServerConfig.model_validate(entry)}
        config.UpstreamFile.model_validate({"servers": {name: entry}})
        _save(h, servers)
        reloaded = _reload(h)
    except ConfigError as e:
        fail_error(e, as_json)
    except StockadeError as e:
        fail_error(e, as_json)
    except ValidationError as e:
        fail("; ".join(f"{'.'.join(str(x) for x in er['loc'])}: {er['msg']}" for er in e.errors())[:1000],
             as_json=as_json)
    emit({"server": name, "config": servers[name].model_dump(mode="json"), "reloaded": reloaded}, as_json,
         lambda d: click.echo(f"upstream server {name} added ({url or entry.get('command') or 'pack ' + str(pack)})"
                              + ("; the running gateway reloaded it" if reloaded else "")))


def _pairs(items: tuple[str, ...], option: str, as_json: bool) -> dict[str, str]:
    pairs = [e.split("=", 1) for e in items]
    if any(len(p) != 2 for p in pairs):
        fail(f"{option} takes NAME=VALUE", as_json=as_json)
    return dict(pairs)


def _command_entry(command: tuple[str, ...], ro: tuple[str, ...], rw: tuple[str, ...], egress: tuple[str, ...],
                   env: tuple[str, ...], no_runtime_dirs: bool, as_json: bool) -> dict[str, Any]:
    exe = shutil.which(command[0]) if "/" not in command[0] else command[0]
    exe = os.path.abspath(exe) if exe else None
    if not exe or not os.path.isfile(exe):
        fail(f"{command[0]}: not found (give an absolute path)", as_json=as_json)
    dirs = [] if no_runtime_dirs else config.runtime_dirs(exe)
    fs = [{"path": d, "mode": "ro"} for d in sorted(set(dirs) | set(ro)) if d not in rw]
    fs += [{"path": d, "mode": "rw"} for d in sorted(set(rw))]
    return {"command": exe, "args": list(command[1:]), "env": _pairs(env, "--env", as_json),
            "egress": list(egress), "filesystem": fs}


def _http_entry(url: str, header: tuple[str, ...], as_json: bool) -> dict[str, Any]:
    return {"url": url, "headers": _pairs(header, "--header", as_json)}


@upstream.command("list")
@home_option
@json_option
def list_(home: str | None, as_json: bool) -> None:
    """Declared servers, and how their instances run when a gateway is up."""
    from stockade.core import admin

    h = need_home(home)
    try:
        servers = config.load(h)
    except ConfigError as e:
        fail_error(e, as_json)
    status: dict[str, Any] = {}
    if admin.running(h):
        try:
            status = admin.call(h, "upstream.status", {}).get("servers", {})
        except StockadeError:
            status = {}
    rows = [{"name": n, "command": s.command or s.url or f"pack {s.pack}", "args": s.args,
             "instances": s.instances, "egress": s.egress,
             "filesystem": [f.model_dump() for f in s.filesystem], "running": status.get(n, {}).get("instances")}
            for n, s in sorted(servers.items())]

    def render(_d: Any) -> None:
        if not rows:
            click.echo("no upstream servers (stockade upstream add NAME -- COMMAND ARGS...)")
        for r in rows:
            inst = r["running"]
            state = ", ".join(f"{a}: {i['state']}" for a, i in inst.items()) if inst else "not running"
            click.echo(f"{r['name']:<16} {r['command']} {' '.join(r['args'])}  [{r['instances']}; {state}]")

    emit({"servers": rows}, as_json, render)


@upstream.command()
@click.argument("name")
@home_option
@json_option
def remove(name: str, home: str | None, as_json: bool) -> None:
    """Remove a server (a running gateway stops it and drops its tools)."""
    h = need_home(home)
    try:
        servers = config.load(h)
        if name not in servers:
            fail(f"no upstream server named {name!r}", as_json=as_json)
        _save(h, {n: s for n, s in servers.items() if n != name})
        reloaded = _reload(h)
    except (ConfigError, StockadeError) as e:
        fail_error(e, as_json)
    emit({"removed": name, "reloaded": reloaded}, as_json, lambda d: click.echo(f"upstream server {name} removed"))


@upstream.command()
@click.argument("name")
@home_option
@json_option
def restart(name: str, home: str | None, as_json: bool) -> None:
    """Stop every instance of a server; each starts again on its agent's next call."""
    out = _admin(need_home(home), "upstream.restart", {"name": name}, as_json)
    emit(out, as_json, lambda d: click.echo(f"{name}: {d['stopped']} instance(s) stopped"))


@upstream.command()
@click.argument("name")
@home_option
@json_option
def logs(name: str, home: str | None, as_json: bool) -> None:
    """The last lines each instance of a server wrote on stderr."""
    out = _admin(need_home(home), "upstream.logs", {"name": name}, as_json)

    def render(d: Any) -> None:
        for agent, lines in d["logs"].items():
            click.echo(f"== {name} [{agent}]")
            for line in lines:
                click.echo(sanitize(line))      # the server's own words: no terminal escapes

    emit(out, as_json, render)


def register(cli: click.Group) -> None:
    cli.add_command(upstream)
