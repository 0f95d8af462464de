"""`stockade volume`: the data home's volume (stockade.core.volume), so that nothing inside a
sandbox names the home's host path, and agents' files have a hard size cap.

`stockade init` as root gives a new home one (`--volume SIZE`, or `--volume none`); these
commands add one to an existing home, show it, and mount or unmount it by hand (the gateway
mounts it at start, `pack install` before it writes)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import click

from stockade.cli.common import EXIT_USAGE, emit, fail, fail_error, get_home, home_option, json_option, need_home
from stockade.core import volume
from stockade.core.admin import running as admin_running
from stockade.core.errors import StockadeError
from stockade.core.home import Home

AUTO = "auto"


def init_volume(h: Home, spec: str, new_home: bool) -> dict[str, Any]:
    """What `init` and `demo` do about the volume. `auto` (the default) gives a new home one
    when this runs as root, sized by `volume.default_size`, and warns instead of failing when
    the machine cannot (no loop devices): the home still works, doctor says what it lacks.
    An explicit SIZE must succeed; `none` opts out."""
    if spec == "none" or volume.configured(h):
        return {"volume": volume.configured(h)}
    if spec == AUTO and (not new_home or os.geteuid() != 0):
        return {"volume": False}
    size = volume.default_size(shutil.disk_usage(h.root).free) if spec == AUTO else _size(spec)
    if not new_home and admin_running(h):
        fail(f"the gateway serving {h.root} is running; stop it first (files would move under it)", EXIT_USAGE)
    try:
        return {"volume": True, "volume_size": size, "volume_created": volume.create(h, size)}
    except StockadeError as e:
        if spec != AUTO:
            raise
        click.echo(f"WARNING: no volume for {h.root}: {e.message}; mountinfo inside sandboxes will name "
                   "the home (stockade doctor, docs/sandbox.md \"The volume\")", err=True)
        return {"volume": False, "volume_error": e.message}


def _size(text: str) -> int:
    try:
        return volume.parse_size(text)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)


def _human(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


@click.group("volume")
def volume_group() -> None:
    """The data home's volume: workspaces, trash, shared and packs on a filesystem of their own."""


@volume_group.command("status")
@home_option
@json_option
def status_cmd(home: str | None, as_json: bool) -> None:
    """Whether the home has a volume, its size and use, and what a sandbox's mountinfo would show."""
    h = need_home(home)
    st = volume.status(h)

    def render(d: dict[str, Any]) -> None:
        if not d["configured"]:
            click.echo(f"no volume: sandboxes' mountinfo names {h.root} (stockade volume create SIZE)")
            return
        click.echo(f"volume {d['image'] or d['mount']}: {'mounted' if d['mounted'] else 'NOT mounted'}")
        if d["mounted"]:
            click.echo(f"  size {_human(d['size_bytes'])}, free {_human(d['free_bytes'])}")
        for name, bound in d["bound"].items():
            click.echo(f"  {name:<10} {'bound' if bound else 'NOT bound'}")
        for path, shown in d["exposed"].items():
            click.echo(f"  WARNING: a bind of {path} shows {shown} inside the sandbox")

    emit(st, as_json, render)
    if st["configured"] and (not st["mounted"] or st["exposed"]):
        raise SystemExit(1)


@volume_group.command("create")
@click.argument("size")
@home_option
@json_option
def create_cmd(size: str, home: str | None, as_json: bool) -> None:
    """Give the home a volume of SIZE (e.g. 20G; sparse: it takes disk as agents write).
    Files already in workspaces, trash, shared and packs move into it. The gateway must be stopped."""
    h = need_home(home)
    nbytes = _size(size)
    if admin_running(h):
        fail(f"the gateway serving {h.root} is running; stop it first (files would move under it)", EXIT_USAGE)
    try:
        done = volume.create(h, nbytes)
    except StockadeError as e:
        fail_error(e, as_json)
    emit({"home": str(h.root), "size_bytes": nbytes, "done": done}, as_json,
         lambda d: click.echo("\n".join(d["done"])))


@volume_group.command("mount")
@home_option
@json_option
def mount_cmd(home: str | None, as_json: bool) -> None:
    """Mount the volume and bind its directories (what the gateway does at start). Idempotent."""
    h = need_home(home)
    try:
        done = volume.ensure_mounted(h)
    except StockadeError as e:
        fail_error(e, as_json)
    emit({"home": str(h.root), "done": done}, as_json,
         lambda d: click.echo("\n".join(d["done"]) or "already mounted"))


@volume_group.command("unmount")
@home_option
@json_option
def unmount_cmd(home: str | None, as_json: bool) -> None:
    """Unmount the binds and the volume (before moving or deleting the home). Idempotent."""
    h = get_home(home)
    if admin_running(h):
        fail(f"the gateway serving {h.root} is running; stop it first", EXIT_USAGE)
    try:
        done = volume.unmount(h)
    except StockadeError as e:
        fail_error(e, as_json)
    emit({"home": str(h.root), "done": done}, as_json,
         lambda d: click.echo("\n".join(d["done"]) or "not mounted"))


def register(cli: click.Group) -> None:
    cli.add_command(volume_group)
