"""`stockade init | serve | doctor | demo`."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, Literal

import click

from stockade.capabilities.registry import load_registry
from stockade.cli.common import (
    EXIT_CHECK_FAILED,
    emit,
    fail,
    fail_error,
    get_home,
    home_option,
    json_option,
    need_home,
)
from stockade.cli.progress import tracked
from stockade.cli.volume import AUTO, init_volume
from stockade.core import agents, logs
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.home import write_private

TEMPLATES = ("personal", "strict", "open")
DEMO_KEY_FILE = "demo-agent.key"


def volume_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--volume", "volume_spec", default=AUTO, show_default=True, metavar="SIZE|auto|none",
                        help="A new home's volume (as root): auto sizes it (8G, at most half the free "
                             "space, sparse); none keeps everything on the home's filesystem.")(fn)


@click.command()
@home_option
@click.option("--policy", type=click.Choice(TEMPLATES), default="personal", show_default=True,
              help="Template for policies/org.yaml (only if it does not exist yet).")
@volume_option
@json_option
def init(home: str | None, policy: str, volume_spec: str, as_json: bool) -> None:
    """Create a data home (idempotent): config, database, keys, policy template, and as root
    its volume (workspaces, trash, shared and packs on a filesystem of their own)."""
    from stockade.gateway import service  # here, not at the top: it pulls in mcp (~2 s) other commands never need
    h = get_home(home)
    new_home = not h.exists()
    try:
        created = service.init_home(h, policy)
        vol = init_volume(h, volume_spec, new_home)
    except (ConfigError, StockadeError) as e:
        fail_error(e, as_json)
    except service.StartupFailed as e:   # a part that does not load: the home would be incomplete
        fail(str(e), 3, as_json)
    created += vol.get("volume_created", [])
    emit({"home": str(h.root), "created": created, "volume": vol["volume"]}, as_json,
         lambda d: click.echo(f"stockade home ready at {d['home']}" +
                              "".join(f"\n  created {c}" for c in d["created"])))


def _check_public(host: str, public: bool, what: str) -> None:
    import ipaddress

    try:
        loop = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = host == "localhost"
    if not loop:
        if not public:
            fail(f"{what} host {host} is not loopback; pass --public to bind it anyway", 2)
        click.echo(f"WARNING: {what} listens on {host}, reachable beyond this machine", err=True)


def _serve(home: str | None, port: int | None, dashboard_port: int | None, public: bool,
           banner: Any = None, accept_install_mismatch: bool = False) -> None:
    from stockade.gateway import service  # here, not at the top: it pulls in mcp (~2 s) other commands never need
    h = need_home(home)
    try:
        cfg = h.config()
    except ConfigError as e:
        fail_error(e)
    _check_public(cfg.gateway.host, public, "gateway")
    _check_public(cfg.dashboard.host, public, "dashboard")
    try:
        gw = service.build(h, port=port, dashboard_port=dashboard_port,
                           accept_install_mismatch=accept_install_mismatch)
    except (ConfigError, StockadeError) as e:
        fail_error(e)
    except service.StartupFailed as e:
        fail(f"cannot start: {e}", 3)

    def ready(g: service.Gateway) -> None:
        if banner:
            banner(g)
        else:
            click.echo(f"stockade serving {g.home.root}")
            for name in g.ports:
                click.echo(f"  {name:<10} {g.url(name)}")
            click.echo("Ctrl-C to stop.")
        sys.stdout.flush()

    try:
        asyncio.run(service.serve(gw, ready))
    except service.StartupFailed as e:
        fail(f"cannot start: {e}", 3)
    except OSError as e:
        fail(f"cannot listen: {e}", 3)
    except (ConfigError, StockadeError) as e:
        fail_error(e)
    dropped = gw.audit.dropped if gw.audit is not None else 0
    if dropped:
        fail(f"stopped, but {dropped} audit records could not be written (see above); their calls were refused", 3)
    click.echo("stockade stopped cleanly.")


@click.command()
@home_option
@click.option("--port", type=int, default=None, help="Gateway port (0 = pick a free one). Default 7700.")
@click.option("--dashboard-port", type=int, default=None, help="Dashboard port (0 = free). Default 7800.")
@click.option("--public", is_flag=True, help="Allow binding a non-loopback address from stockade.yaml.")
@click.option("--accept-install-mismatch", is_flag=True,
              help="Start although the install does not verify against its signed release (this start only; audited).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="stderr log lines as text, or one JSON object per line (journald, a log shipper).")
@click.pass_context
def serve(ctx: click.Context, home: str | None, port: int | None, dashboard_port: int | None, public: bool,
          accept_install_mismatch: bool, log_format: Literal["text", "json"]) -> None:
    """Run the gateway (and dashboard) in the foreground; writes run/ports.json when listening."""
    logs.configure((ctx.obj or {}).get("log_level", "WARNING"), log_format)
    _serve(home, port, dashboard_port, public, accept_install_mismatch=accept_install_mismatch)


@click.command()
@home_option
@click.option("--port", type=int, default=7700, show_default=True)
@click.option("--dashboard-port", type=int, default=7800, show_default=True)
@click.option("--rotate-key", is_flag=True, help="Give the demo agent a new key (the old one stops working).")
@volume_option
def demo(home: str | None, port: int, dashboard_port: int, rotate_key: bool, volume_spec: str) -> None:
    """What `make run` does: init a demo home, ensure a demo agent, serve, print URLs and key.

    The demo agent's key is kept in the demo home (demo-agent.key, 0600), so a client configured
    with it keeps working across restarts; `--rotate-key` replaces it."""
    from stockade.gateway import service  # here, not at the top: it pulls in mcp (~2 s) other commands never need
    h = get_home(home)
    new_home = not h.exists()
    service.init_home(h, "personal")
    try:
        init_volume(h, volume_spec, new_home)
    except StockadeError as e:
        fail_error(e)
    key = _demo_key(h, rotate_key)

    def banner(g: Any) -> None:
        click.echo(f"stockade demo home: {h.root}")
        click.echo(f"  export STOCKADE_HOME={shlex.quote(str(h.root))}   # then every stockade command uses it")
        click.echo(f"  gateway     {g.url('gateway')}  (JSON-RPC at /rpc, MCP at /mcp, /mcp/ws)")
        if "dashboard" in g.ports:
            click.echo(f"  dashboard   {g.url('dashboard')}  (login: stockade admin token --home {h.root})")
        click.echo(f"  agent key   {key}   (agent 'demo')")
        click.echo("Try it:")
        click.echo(f"  curl -s {g.url('gateway')}/rpc -H 'Authorization: Bearer {key}' \\")
        click.echo("    -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"capabilities.invoke\","
                   "\"params\":{\"name\":\"system.time\"}}'")
        click.echo("Ctrl-C to stop.")

    _serve(str(h.root), port, dashboard_port, False, banner)


def _demo_key(h: Any, rotate: bool) -> str:
    """The demo agent's key: the one kept in the demo home while it still authenticates, else a
    new one (created or rotated) written there 0600 before it is shown."""
    path = h.root / DEMO_KEY_FILE
    conn = h.db()
    try:
        if not rotate and path.exists():
            kept = path.read_text().strip()
            try:
                if agents.authenticate(conn, kept).name == "demo":
                    return kept
            except StockadeError:
                pass       # revoked or rotated elsewhere: issue a fresh one below
        exists = any(a.name == "demo" for a in agents.list_all(conn))
        try:   # a demo agent the owner revoked stays revoked (agent reactivate demo brings it back)
            key = agents.rotate(conn, "demo") if exists else agents.create(conn, "demo")
        except StockadeError as e:
            fail_error(e)
    finally:
        conn.close()
    write_private(path, key + "\n")
    return key


def doctor_checks(home_path: str | None, step: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Every layer's real status; parts add theirs through `<part>.setup.doctor(home)`; `step`
    names the part being checked (the progress line)."""
    from stockade.gateway import service  # here, not at the top: it pulls in mcp (~2 s) other commands never need
    h = get_home(home_path)
    out: dict[str, Any] = {"home": str(h.root), "checks": {}}
    checks = out["checks"]
    checks["home"] = _check_home(h)
    try:
        h.config()
        checks["config"] = {"status": "ok"}
    except ConfigError as e:
        checks["config"] = {"status": "critical", "errors": e.errors}
    try:
        checks["capabilities"] = {"status": "ok", "count": len(load_registry().all())}
    except ConfigError as e:
        checks["capabilities"] = {"status": "critical", "errors": e.errors}
    for name in service.PARTS:
        step(f"checking {name}")
        try:
            part = service.load_part(name)
        except service.StartupFailed as e:
            checks[name] = {"status": "critical", "error": str(e)}
            continue
        if hasattr(part, "doctor"):
            try:
                checks.update(part.doctor(h))
            except Exception as e:  # a check that crashes is itself a finding
                checks[part.__name__.split(".")[1]] = {"status": "critical", "error": f"{type(e).__name__}: {e}"}
    statuses = {c.get("status") for c in checks.values()}
    out["status"] = "critical" if "critical" in statuses else "degraded" if "degraded" in statuses else "ok"
    return out


def _check_home(h: Any) -> dict[str, Any]:
    if not h.exists():
        return {"status": "critical", "error": f"no home at {h.root} (stockade init)"}
    loose = []
    store = str(h.packs) + os.sep
    for root, dirs, files in os.walk(h.root):
        if (root + os.sep).startswith(store) and root != str(h.packs):
            continue  # the pack store is read-only 0444/0555 by design, behind the 0700 packs/ dir
        if root == str(h.root) and "volume" in dirs:
            dirs.remove("volume")   # the volume's files are walked where they are bound (workspaces, ...)
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if p == str(h.shared) and st.st_mode & 0o022 == 0:
                continue  # shared/ is 0755 so the sandbox's unprivileged uid can list it; the home stays 0700
            if st.st_mode & 0o077 and not os.path.islink(p) and not p.endswith(".sock"):
                loose.append(p)
    if loose:
        return {"status": "degraded", "error": "group/other permissions on files in the home", "paths": loose[:20]}
    return {"status": "ok", "path": str(h.root)}


@click.command()
@home_option
@click.option("--verify-install", is_flag=True,
              help="Also check every installed file (stockade's and each dependency's, .pyc included) "
                   "against the signed release manifest.")
@json_option
def doctor(home: str | None, verify_install: bool, as_json: bool) -> None:
    """Check the home and report the real status of every security layer."""
    with tracked("doctor", as_json) as t:
        out = doctor_checks(home, t.step)
        if verify_install:
            from stockade.packs.supply import verify_install as vi

            t.step("hashing every installed file")
            out["checks"]["install"] = vi()
            if out["checks"]["install"]["status"] == "critical":
                out["status"] = "critical"

    def render(d: dict[str, Any]) -> None:
        colours = {"ok": "green", "degraded": "yellow", "critical": "red"}
        for name, c in d["checks"].items():
            st = c.get("status", "?")
            detail = {k: v for k, v in c.items() if k != "status"}
            click.echo(f"{click.style(f'{st:<9}', fg=colours.get(st))} {name:<14} "
                       f"{json.dumps(detail, default=str) if detail else ''}")
        click.echo(f"overall: {d['status']}")

    emit(out, as_json, render)
    if out["status"] == "critical":
        sys.exit(EXIT_CHECK_FAILED)


def register(cli: click.Group) -> None:
    for c in (init, serve, demo, doctor):
        cli.add_command(c)
