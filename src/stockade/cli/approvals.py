"""`stockade approvals list|show|approve|reject|grant|revoke-grant`, `stockade watch`, `stockade agents`.

These talk to the running gateway over run/admin.sock (peer-credential checked). Everything an
agent could have put into a string is sanitised of terminal control sequences before printing.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from stockade.cli.common import (
    EXIT_CHECK_FAILED,
    emit,
    fail_error,
    home_option,
    json_option,
    need_home,
    sanitize,
    show_value,
    warning_line,
)
from stockade.core import admin as admin_client
from stockade.core.errors import StockadeError
from stockade.supervision.shown import who_text


def _call(home: str | None, cmd: str, args: dict[str, Any], as_json: bool) -> Any:
    h = need_home(home)
    try:
        return admin_client.call(h, cmd, args)
    except StockadeError as e:
        fail_error(e, as_json)


def _ts(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z" if isinstance(t, int | float) else "-"


def _args_text(a: Any, width: int = 60) -> str:
    shown = show_value(a, indent=None)
    s = shown.text if len(shown.text) <= width else shown.text[: width - 1] + "…"
    return f"WARNING hidden characters: {s}" if shown.suspicious else s


def _show(a: dict[str, Any]) -> None:
    click.echo(f"approval   {sanitize(a['approval'])}  [{a['status']}]")
    click.echo(f"agent      {sanitize(a['agent'])} (session {sanitize(str(a.get('session')))})")
    click.echo(f"capability {sanitize(a['capability'])}")
    rule = f"rule {a['rule']}" if a.get("rule") else "no rule matched (the default tier)"
    click.echo(f"decided by {sanitize(rule)} ({sanitize(str(a.get('layer') or 'default'))} layer)"
               + (f": {sanitize(a['policy_reason'])}" if a.get("policy_reason") else ""))
    click.echo(f"requested  {_ts(a.get('created'))}   expires {_ts(a.get('expires'))}")
    if a.get("decided"):
        click.echo(f"decided    {_ts(a['decided'])} by {who_text(a.get('decided_by'))}")
    if a.get("reason"):
        click.echo(f"reason     {sanitize(a['reason'])}")
    click.echo(f"args sha256 {a['args_hash']}")
    args = show_value(a.get("args"))
    warn = warning_line(show_value([a.get("args"), a.get("agent"), a.get("capability")]).suspicious)
    if warn:
        click.echo(warn)
    click.echo("arguments:")
    click.echo(args.text)
    if "result" in a:
        click.echo("result:")
        click.echo(show_value(a["result"]).text)
    if "error" in a:
        click.echo(f"error: {show_value(a['error'], indent=None).text}")


@click.group()
def approvals() -> None:
    """The owner's approval queue (talks to the running gateway)."""


@approvals.command("list")
@click.option("--all", "all_", is_flag=True, help="Also decided, expired and executed approvals.")
@click.option("--status", type=click.Choice(["pending", "approved", "running", "executed", "failed", "rejected",
                                             "expired"]), default=None)
@home_option
@json_option
def list_(all_: bool, status: str | None, home: str | None, as_json: bool) -> None:
    """List pending approvals (or all of them)."""
    st = status or (None if all_ else "pending")
    out = _call(home, "approvals.list", {"status": st or "all"}, as_json)

    def render(d: dict[str, Any]) -> None:
        if not d["approvals"]:
            click.echo("no approvals" + (" pending" if st == "pending" else ""))
        for a in d["approvals"]:
            held = " (held)" if a.get("held") else ""
            click.echo(f"{sanitize(a['approval'])}  {a['status']:<9}{held} {sanitize(a['agent'])} -> "
                       f"{sanitize(a['capability'])} {_args_text(a['args'])}  expires {_ts(a['expires'])}")
        for g in d.get("grants", []):
            click.echo(f"grant {sanitize(g['grant'])}: {sanitize(g['agent'])} may {sanitize(g['capability'])} "
                       f"until {_ts(g['expires'])}")

    emit(out, as_json, render)


@approvals.command()
@click.argument("approval_id")
@home_option
@json_option
def show(approval_id: str, home: str | None, as_json: bool) -> None:
    """Show one approval with its exact arguments."""
    emit(_call(home, "approvals.show", {"id": approval_id}, as_json), as_json, _show)


def _decided(d: dict[str, Any], verb: str) -> None:
    if d.get("changed"):
        click.echo(f"{verb} {sanitize(d['approval'])} ({sanitize(d['agent'])} -> {sanitize(d['capability'])})")
    else:
        click.echo(f"{sanitize(d['approval'])} was already {d['status']}; nothing changed")


@approvals.command()
@click.argument("approval_id")
@home_option
@json_option
def approve(approval_id: str, home: str | None, as_json: bool) -> None:
    """Approve one call: it runs exactly once, with exactly the arguments shown."""
    out = _call(home, "approvals.approve", {"id": approval_id}, as_json)
    emit(out, as_json, lambda d: _decided(d, "approved"))
    if out.get("conflict"):
        sys.exit(EXIT_CHECK_FAILED)


@approvals.command()
@click.argument("approval_id")
@click.option("--reason", default=None, help="Told to the agent.")
@home_option
@json_option
def reject(approval_id: str, reason: str | None, home: str | None, as_json: bool) -> None:
    """Reject one call (nothing runs)."""
    out = _call(home, "approvals.reject", {"id": approval_id, "reason": reason}, as_json)
    emit(out, as_json, lambda d: _decided(d, "rejected"))
    if out.get("conflict"):
        sys.exit(EXIT_CHECK_FAILED)


@approvals.command()
@click.argument("approval_id", required=False)
@click.option("--agent", default=None)
@click.option("--capability", default=None)
@click.option("--minutes", type=float, required=True, help="How long the grant lasts.")
@click.option("--reason", default=None)
@home_option
@json_option
def grant(approval_id: str | None, agent: str | None, capability: str | None, minutes: float, reason: str | None,
          home: str | None, as_json: bool) -> None:
    """Allow a capability for an agent for N minutes (from an approval ID, or --agent/--capability)."""
    if approval_id is None and not (agent and capability):
        raise click.UsageError("give an approval ID, or --agent and --capability")
    args: dict[str, Any] = {"minutes": minutes, "reason": reason}
    if approval_id:
        args["id"] = approval_id
    else:
        args.update(agent=agent, capability=capability)
    out = _call(home, "approvals.grant", args, as_json)
    emit(out, as_json, lambda d: click.echo(
        f"grant {sanitize(d['grant']['grant'])}: {sanitize(d['grant']['agent'])} may call "
        f"{sanitize(d['grant']['capability'])} without asking until {_ts(d['grant']['expires'])}"))


@approvals.command("revoke-grant")
@click.argument("grant_id")
@home_option
@json_option
def revoke_grant(grant_id: str, home: str | None, as_json: bool) -> None:
    """End a time-limited grant now."""
    out = _call(home, "approvals.revoke_grant", {"id": grant_id}, as_json)
    emit(out, as_json, lambda d: click.echo(f"grant {sanitize(d['grant'])} revoked"))


def _event_line(ev: dict[str, Any]) -> str:
    d = ev.get("data") or {}
    rest = {k: v for k, v in d.items() if k not in ("agent", "capability")}
    return sanitize(f"{_ts(ev.get('ts'))[11:]} {ev.get('severity', ''):<8} {ev.get('kind', ''):<20} "
                    f"{d.get('agent') or '-':<12} {d.get('capability') or '-':<22} "
                    f"{json.dumps(rest, ensure_ascii=False, default=str)[:200]}")


@click.command()
@click.option("--history", type=int, default=20, show_default=True, help="Recent events to show first.")
@home_option
@json_option
def watch(history: int, home: str | None, as_json: bool) -> None:
    """Follow live events (notify-tier calls, denials, approvals, health alerts); Ctrl-C to stop."""
    h = need_home(home)
    try:
        for ev in admin_client.stream(h, "watch", {"history": history}):
            if ev.get("kind") == "heartbeat":
                continue
            click.echo(json.dumps(ev, default=str) if as_json else _event_line(ev))
            sys.stdout.flush()
    except StockadeError as e:
        fail_error(e, as_json)
    except KeyboardInterrupt:
        pass


@click.command("agents")
@home_option
@json_option
def agents_status(home: str | None, as_json: bool) -> None:
    """Agents and what they are doing (pending approvals, grants, sessions, last activity)."""
    h = need_home(home)
    try:
        out = admin_client.call(h, "agents.status", {})
    except StockadeError as e:
        if e.type != "Unreachable":
            fail_error(e, as_json)
        from stockade.core import agents

        out = {"server": "not running", "agents": [
            {"name": a.name, "status": "active" if a.active else "revoked", "created": a.created_at}
            for a in agents.list_all(h.db())]}

    def render(d: dict[str, Any]) -> None:
        click.echo(f"gateway: {d['server']}")
        for a in d["agents"]:
            extra = ""
            if "pending_approvals" in a:
                extra = (f"  pending {a['pending_approvals']}  grants {a['live_grants']}  sessions "
                         f"{a['open_sessions']}  last event {_ts(a.get('last_event'))}")
            click.echo(f"{sanitize(a['name']):<20} {a['status']:<8}{extra}")

    emit(out, as_json, render)


def register(cli: click.Group) -> None:
    cli.add_command(approvals)
    cli.add_command(watch)
    cli.add_command(agents_status)
