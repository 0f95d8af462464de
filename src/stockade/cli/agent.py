"""`stockade agent create|list|revoke|rotate|reactivate` (docs/design.md "Agents and keys").

Works on a stopped home (writes stockade.db directly) and on a running one (the server reads
the same database on every call, so a revoke takes effect at the next request). A revoke ends the
agent's waiting approvals and its grants in the same transaction; on a running gateway it goes
through the admin socket so that calls the agent has held end at once. Rotating a revoked
agent's key does not reactivate it: that takes `agent reactivate` (or `rotate --reactivate`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click

import stockade.approvals.store  # noqa: F401  (its ON_REVOKE hook: a revoke ends approvals and grants)
from stockade.cli.common import EXIT_USAGE, emit, fail, fail_error, home_option, json_option, need_home
from stockade.cli.names import unknown
from stockade.core import admin, agents
from stockade.core.errors import StockadeError
from stockade.core.home import Home


def _ts(t: int | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else None


def _audit(home: Home, kind: str, name: str, **data: object) -> None:
    try:
        from stockade.audit.writer import append_offline_or_admin
    except ImportError:
        return
    append_offline_or_admin(home, {"kind": kind, "agent": name, **data})


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
    """Revoke an agent's key at once; its waiting approvals expire and its grants end."""
    h = need_home(home)
    _known_agent(h, name, as_json)
    try:
        if admin.running(h):
            out = admin.call(h, "agents.revoke", {"name": name})
        else:
            ended = agents.revoke_ending(h.db(), name)
            out = {"name": name, "status": "revoked", "expired_approvals": ended.get("approvals", []),
                   "ended_grants": ended.get("grants", [])}
            _audit(h, "agent.revoked", name, by={"via": "cli-offline", "uid": os.getuid(), "pid": os.getpid()},
                   expired_approvals=out["expired_approvals"], ended_grants=out["ended_grants"])
    except StockadeError as e:
        fail_error(e, as_json)
    out["revoked"] = _ts(agents.get(h.db(), name).revoked_at)
    emit(out, as_json, lambda d: click.echo(
        f"agent {name} revoked ({len(d['expired_approvals'])} waiting approvals expired, "
        f"{len(d['ended_grants'])} grants ended)"))


def _known_agent(h: Home, name: str, as_json: bool) -> None:
    """An unknown name is the owner's typo: say so with the nearest agent, not a schema hint."""
    known = [a.name for a in agents.list_all(h.db())]
    if name not in known:
        fail(unknown("agent", name, known, "stockade agent list"), EXIT_USAGE, as_json)


def _new_key(name: str, home: str | None, as_json: bool, reactivate: bool) -> None:
    h = need_home(home)
    _known_agent(h, name, as_json)
    try:
        key = agents.rotate(h.db(), name, reactivate=reactivate)
    except StockadeError as e:
        fail_error(e, as_json)
    _audit(h, "agent.reactivated" if reactivate else "agent.rotated", name)
    emit({"name": name, "key": key, "active": True}, as_json,
         lambda d: click.echo(f"new key for {name} (shown once):\n{key}"))


@agent.command()
@click.argument("name")
@click.option("--reactivate", is_flag=True, help="Also reactivate a revoked agent (refused without it).")
@home_option
@json_option
def rotate(name: str, reactivate: bool, home: str | None, as_json: bool) -> None:
    """Issue a new key; the old one stops working immediately. A revoked agent stays revoked."""
    _new_key(name, home, as_json, reactivate)


@agent.command()
@click.argument("name")
@home_option
@json_option
def reactivate(name: str, home: str | None, as_json: bool) -> None:
    """Bring back a revoked agent with a new key (the revoked key never works again)."""
    _new_key(name, home, as_json, True)


def register(cli: click.Group) -> None:
    cli.add_command(agent)
