"""`stockade upgrade FILE`: install a newer release signed with the pinned publisher key."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stockade.cli.common import EXIT_CHECK_FAILED, emit, fail_error, json_option
from stockade.cli.progress import tracked
from stockade.core.errors import StockadeError


@click.command()
@click.argument("file", type=click.Path(exists=True))
@click.option("--allow-downgrade", is_flag=True, help="Also install a release not newer than the installed one.")
@click.option("--offline", is_flag=True, help="Use only the wheels beside the manifest (no package index).")
@json_option
def upgrade(file: str, allow_downgrade: bool, offline: bool, as_json: bool) -> None:
    """Install the release whose signed manifest is FILE (or the one in directory FILE).

    Refused unless the manifest verifies with the pinned publisher key and is newer than the
    installed release; every wheel is installed by its signed SHA-256; then the install is verified.
    """
    from stockade.release import keys
    from stockade.release import upgrade as up
    from stockade.release.verify import Install

    inst = Install.current()
    try:
        cand = up.load_candidate(Path(file), keys.PUBLISHER_KEY)
        action = up.plan(cand.manifest["version"], up.installed_version(inst, keys.PUBLISHER_KEY), allow_downgrade)
        with tracked(f"upgrade to {cand.manifest['version']}", as_json) as t:
            t.step("installing the signed wheels, then verifying the install")
            result = {"action": action, **up.install(cand, inst, keys.PUBLISHER_KEY, offline=offline)}
    except StockadeError as e:
        fail_error(e, as_json)
    emit(result, as_json, lambda d: click.echo(
        f"{d['action']}: stockade {d['installed']} installed; verify: {d['verify']['message']}"))
    if result["verify"]["status"] != "ok":
        sys.exit(EXIT_CHECK_FAILED)


def register(cli: click.Group) -> None:
    cli.add_command(upgrade)
