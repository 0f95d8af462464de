"""Shared CLI plumbing: --home/--json options, output, exit codes (docs/design.md "CLI")."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from stockade.core.display import WARNING, Shown, show_json, show_text
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.home import Home

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def sanitize(text: str) -> str:
    """Agent- or server-supplied text made safe and visible for a terminal (stockade.core.display):
    control characters (so every ANSI/OSC sequence), bidi controls, zero-width and look-alike
    characters are printed as escapes (`\\u2067`); newlines stay. Backslashes are left alone: the
    free text in these lines is JSON-encoded already, and JSON escapes its own backslashes."""
    return show_text(text, multiline=True, reversible=False).text


def show_value(value: Any, indent: int | None = 2) -> Shown:
    """A JSON value (exact arguments, a result) for the terminal, escaped the same way."""
    return show_json(value, indent=indent)


def warning_line(suspicious: bool) -> str | None:
    return f"WARNING: {WARNING}" if suspicious else None


def home_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--home", "home", type=click.Path(file_okay=False), default=None,
                        help="Data home (default $STOCKADE_HOME, /var/lib/stockade as root).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def get_home(home: str | None) -> Home:
    return Home.at(home)


def need_home(home: str | None) -> Home:
    h = Home.at(home)
    if not h.exists():
        fail(f"no stockade home at {h.root} (run: stockade init --home {h.root})", EXIT_USAGE)
    return h


def emit(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=None, sort_keys=False, default=str))
    elif render is not None:
        render(data)
    else:
        click.echo(sanitize(json.dumps(data, indent=2, default=str)))


def fail(message: str, code: int = EXIT_USAGE, as_json: bool = False, **extra: Any) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": {"message": message, **extra}}))
    else:
        click.echo(f"stockade: {sanitize(message)}", err=True)
    sys.exit(code)


def fail_error(e: StockadeError | ConfigError, as_json: bool = False) -> NoReturn:
    if isinstance(e, ConfigError):
        if as_json:
            click.echo(json.dumps({"error": {"type": "ConfigError", "errors": e.errors}}))
        else:
            for line in e.errors:
                click.echo(sanitize(line), err=True)
        sys.exit(EXIT_USAGE)
    code = EXIT_UNREACHABLE if e.type in ("Unreachable", "VaultSealed") else EXIT_USAGE
    if as_json:
        d = e.to_dict()
        if e.recovery == StockadeError(e.type, "").recovery:
            d.pop("recovery", None)     # the type's stock hint speaks to an agent, not to the owner
        click.echo(json.dumps({"error": d}))
    else:
        click.echo(f"stockade: {e.type}: {sanitize(e.message)}", err=True)
    sys.exit(code)
