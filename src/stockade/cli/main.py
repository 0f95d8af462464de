"""Entry point: `stockade <group> <command>`. Each module in MODULES adds its commands."""

from __future__ import annotations

import importlib

import click

from stockade import __version__
from stockade.core import logs

MODULES = ("server", "agent", "connect", "bench", "policy", "audit", "approvals", "vault", "pack",
           "perimeter", "admin", "release", "upgrade", "status", "service", "upstream", "volume")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stockade")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="WARNING",
              show_default=True, envvar="STOCKADE_LOG_LEVEL",
              help="Level of stockade's log on stderr (also $STOCKADE_LOG_LEVEL).")
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """stockade: a security gateway that lets AI agents work on this server, and nothing more."""
    ctx.obj = {"log_level": log_level.upper()}
    logs.configure(log_level)


def _register() -> None:
    for mod in MODULES:
        name = f"stockade.cli.{mod}"
        try:
            m = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        m.register(cli)


_register()


def main() -> None:
    cli()
