"""Entry point: `stockade <group> <command>`. Each module in MODULES adds its commands."""

from __future__ import annotations

import importlib

import click

from stockade import __version__

MODULES = ("server", "agent", "connect", "bench", "policy", "audit", "approvals", "vault", "pack",
           "perimeter", "admin", "release", "upgrade")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stockade")
def cli() -> None:
    """stockade: a security gateway that lets AI agents work on this server, and nothing more."""


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
