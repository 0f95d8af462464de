"""`stockade agent create|list|revoke|rotate` (DESIGN.md §4).

Works on a stopped home (writes stockade.core.db directly) and on a running one (the server reads
the same database on every call, so a revoke takes effect at the next request).
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from stockade.cli.common import emit, fail_error, home_option, json_option, need_home
from stockade.core import agents
from stockade.core.errors import StockadeError
from stockade.core.home import Home


def _ts(t: int | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else None


def _audit(home: Home, kind: str, name: str) -> None:
    try:
        from stockade.audit.writer import append_offline_or_admin
    except ImportError:
        return
    append_offline_or_admin(home, {"kind": kind, "agent": name})


@click.group()
def agent() -> None:
    """Manage agents and their API keys."""


@agent.command()
@click.argument("name")
@home_option
@json_option
def create(name: str, home: str | None, as_json: bool) -> None:
    """Create an agent and print its key (shown once)."""
    h = need_home(home)
    conn = h.db()
    try:
        key = agents.create(conn, name)
    except StockadeError as e:
        fail_error(e, as_json)
    h.workspace(name).mkdir(mode=0o700, exist_ok=True)
    _audit(h, "agent.created", name)
    emit({"name": name, "key": key}, as_json,
         lambda d: click.echo(f"agent {d['name']} created. Key (shown once, store it now):\n{d['key']}"))


@agent.command("list")
@home_option
@json_option
def list_(home: str | None, as_json: bool) -> None:
    """List agents."""
    h = need_home(home)
    rows = [{"name": a.name, "status": "active" if a.active else "revoked", "created": _ts(a.created_at),
             "rotated": _ts(a.rotated_at), "revoked": _ts(a.revoked_at)} for a in agents.list_all(h.db())]

    def render(rs: list[dict]) -> None:
        if not rs:
            click.echo("no agents (stockade agent create NAME)")
        for r in rs:
            click.echo(f"{r['name']:<32} {r['status']:<8} created {r['created']}")

    emit({"agents": rows} if as_json else rows, as_json, render)


@agent.command()
@click.argument("name")
@home_option
@json_option
def revoke(name: str, home: str | None, as_json: bool) -> None:
    """Revoke an agent's key at once (its calls fail with Unauthenticated)."""
    h = need_home(home)
    try:
        a = agents.revoke(h.db(), name)
    except StockadeError as e:
        fail_error(e, as_json)
    _audit(h, "agent.revoked", name)
    emit({"name": a.name, "revoked": _ts(a.revoked_at)}, as_json, lambda d: click.echo(f"agent {name} revoked"))


@agent.command()
@click.argument("name")
@home_option
@json_option
def rotate(name: str, home: str | None, as_json: bool) -> None:
    """Issue a new key; the old one stops working immediately."""
    h = need_home(home)
    try:
        key = agents.rotate(h.db(), name)
    except StockadeError as e:
        fail_error(e, as_json)
    _audit(h, "agent.rotated", name)
    emit({"name": name, "key": key}, as_json, lambda d: click.echo(f"new key for {name} (shown once):\n{key}"))


def register(cli: click.Group) -> None:
    cli.add_command(agent)
