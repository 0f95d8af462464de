"""`stockade admin token`: print a fresh admin token for the dashboard and `/api/*`."""

from __future__ import annotations

import click

from stockade.cli.common import emit, home_option, json_option, need_home


@click.group()
def admin() -> None:
    """The owner's credentials for the dashboard."""


@admin.command()
@home_option
@json_option
def token(home: str | None, as_json: bool) -> None:
    """Issue a fresh admin token (the previous one and its dashboard sessions stop working)."""
    from stockade.supervision import tokens

    h = need_home(home)
    conn = h.db()
    try:
        tok = tokens.issue(conn)
    finally:
        conn.close()
    emit({"token": tok}, as_json, lambda d: click.echo(
        f"{d['token']}\nLog in at the dashboard with it (https://127.0.0.1:7800 through your SSH tunnel)."))


def register(cli: click.Group) -> None:
    cli.add_command(admin)
