"""`stockade status [--json]`: is the gateway of this home running, and is it healthy?

Asks the running gateway over its admin socket (`status`). Exit 0 when every part is healthy,
1 when any part is degraded or critical, 3 when no gateway answers for this home.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from stockade.cli.common import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNREACHABLE, emit, get_home, home_option, json_option
from stockade.core import admin
from stockade.core.errors import StockadeError

COLOURS = {"ok": "green", "degraded": "yellow", "critical": "red"}


def exit_code(st: dict[str, Any]) -> int:
    if not st.get("running"):
        return EXIT_UNREACHABLE
    return EXIT_OK if st.get("status") == "ok" else EXIT_CHECK_FAILED


def _uptime(seconds: float) -> str:
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _render(st: dict[str, Any]) -> None:
    if not st.get("running"):
        click.echo(f"stockade is not running for {st['home']} ({st.get('reason', '')})")
        return
    click.echo(f"stockade {st['version']} running for {st['home']}: "
               f"{click.style(st['status'], fg=COLOURS.get(st['status']))}")
    click.echo(f"  pid {st['pid']}, up {_uptime(st['uptime_seconds'])} "
               f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st['started']))})")
    for name, url in st["addresses"].items():
        click.echo(f"  {name:<10} {url}")
    for name, part in st["parts"].items():
        click.echo(f"  {click.style(f'{part:<9}', fg=COLOURS.get(part))} {name}")
    vault = st.get("vault")
    if vault:
        click.echo(f"  vault      {'sealed' if vault['sealed'] else 'unsealed'}"
                   + ("" if vault.get("initialized") else " (not set up)"))
    if st.get("pending_approvals") is not None:
        click.echo(f"  approvals  {st['pending_approvals']} pending")
    audit = st.get("audit")
    if audit:
        click.echo(f"  audit      head seq {audit['seq']}, last checkpoint seq {audit['last_checkpoint_seq']}"
                   + (" (DISK FULL)" if audit.get("disk_full") else ""))
    sandbox = st.get("sandbox")
    if sandbox:
        click.echo(f"  sandbox    zygote pid {sandbox.get('zygote_pid')}, restarts {sandbox.get('zygote_restarts')}")
        pool = sandbox.get("pool") or {}
        if pool.get("enabled"):
            click.echo(f"  pool       {pool.get('ready', 0)} ready, {pool.get('arming', 0)} arming, "
                       f"{(pool.get('memory_bytes') or 0) >> 20} MiB; {pool.get('hits', 0)} hits, "
                       f"{pool.get('misses', 0)} misses, {pool.get('discarded', 0)} discarded")


@click.command("status")
@home_option
@json_option
def status(home: str | None, as_json: bool) -> None:
    """Running or not, pid, uptime, addresses, each part's health, vault, approvals, audit head.
    Exit 0 healthy, 1 degraded, 3 not running."""
    h = get_home(home)
    try:
        st = admin.call(h, "status", timeout=30)
    except StockadeError as e:
        st = {"running": False, "home": str(h.root), "reason": e.message}
    emit(st, as_json, _render)
    sys.exit(exit_code(st))


def register(cli: click.Group) -> None:
    cli.add_command(status)
