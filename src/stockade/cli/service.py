"""`stockade service install | uninstall | status`: run stockade under systemd.

The units ship in the package (`stockade/cli/units/*.service`, docs/service.md says which
hardening is on and why); `install` fills in this install's Python and the data home, writes them
to the unit directory, creates the home (0700, owned by root: the service runs as root because
the sandbox needs namespaces, cgroups and nftables) and enables the gateway with `systemctl` when
systemd runs this machine. The perimeter unit is written too, but enabled only with
`--perimeter`: a perimeter without the owner's knock key locks the owner out of SSH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import EXIT_USAGE, emit, fail, json_option
from stockade.core import admin
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.home import Home

UNITS = ("stockade.service", "stockade-perimeter.service")
GATEWAY, PERIMETER = UNITS
MARKER = "Written by `stockade service install`"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_HOME = "/var/lib/stockade"
LOG_FORMATS = ("json", "text")


# -- the pure half -----------------------------------------------------------------------------
def template(name: str) -> str:
    return resources.files("stockade.cli").joinpath("units", name).read_text()


def render(text: str, *, home: Path, python: str, log_format: str = "json") -> str:
    """A unit template with this install's values; every placeholder must be filled."""
    for key, value in (("@HOME@", str(home)), ("@PYTHON@", python), ("@LOGFORMAT@", log_format)):
        if any(c.isspace() or c in "\"'\\%$;" for c in value):
            raise ValueError(f"{key.strip('@').lower()} {value!r} cannot go into a unit file "
                             "(whitespace, quotes, %, $ or ; in it)")
        text = text.replace(key, value)
    if re.search(r"@[A-Z]+@", "\n".join(line for line in text.splitlines() if not line.startswith("#"))):
        raise ValueError("a unit placeholder was left unfilled")
    return text


@dataclass(frozen=True)
class Target:
    """Where `install` writes and what it creates, checked before anything is touched."""

    unit_dir: Path
    home: Path


def problems(target: Target, euid: int) -> list[str]:
    """Why `install` must not run here (empty: go ahead); reads the filesystem, changes nothing."""
    if euid != 0:   # alone: what a non-root user may not even stat would only add noise (or a traceback)
        return ["service install needs root: it writes system units and a data home owned by root "
                "(run it with sudo)"]
    out = []
    if not target.unit_dir.is_dir():
        out.append(f"unit directory {target.unit_dir} does not exist (is this a systemd machine? "
                   "pass --unit-dir)")
    if not target.home.is_absolute():
        out.append(f"home {target.home} must be an absolute path")
    probe = target.home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = probe.stat()
    if probe == target.home and st.st_uid != 0:
        out.append(f"home {target.home} is owned by uid {st.st_uid}, not root; the service runs as root and "
                   "will not adopt another user's home (chown -R root: it, or choose another --home)")
    elif probe != target.home and st.st_uid != 0:
        out.append(f"{probe} (where the home would be created) is owned by uid {st.st_uid}, not root")
    elif st.st_mode & 0o002 and not st.st_mode & 0o1000:
        out.append(f"{probe} is writable by everyone; choose a home under a root-owned directory")
    return out


# -- systemd -----------------------------------------------------------------------------------
def systemd_running() -> bool:
    """sd_booted(3): systemd is PID 1 exactly when /run/systemd/system is a directory."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*args: str) -> tuple[int, str]:
    p = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, (p.stdout + p.stderr).strip()


def ours(path: Path) -> bool:
    """A unit file this command wrote (uninstall never removes anyone else's)."""
    try:
        return MARKER in path.read_text(errors="replace")[:400]
    except OSError:
        return False


# -- commands ----------------------------------------------------------------------------------
@click.group("service")
def service_group() -> None:
    """Run stockade under systemd: install / uninstall its units, show their state."""


def _unit_dir_option(fn: Any) -> Any:
    return click.option("--unit-dir", type=click.Path(), default=DEFAULT_UNIT_DIR, show_default=True,
                        help="Where the unit files go.")(fn)


@service_group.command("install")
@click.option("--home", type=click.Path(), default=DEFAULT_HOME, show_default=True,
              help="The service's data home (created 0700, owned by root).")
@_unit_dir_option
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="json", show_default=True,
              help="Log lines for journald: one JSON object each, or text.")
@click.option("--perimeter", "enable_perimeter", is_flag=True,
              help="Also enable the perimeter (configure its keys first: stockade perimeter keygen).")
@click.option("--no-enable", is_flag=True, help="Write the units and the home, enable nothing.")
@json_option
def install(home: str, unit_dir: str, log_format: str, enable_perimeter: bool, no_enable: bool,
            as_json: bool) -> None:
    """Write the systemd units, create the data home, enable the gateway."""
    from stockade.gateway import (
        service as wiring,  # here, not at the top: it pulls in mcp (~2 s) other commands never need
    )
    target = Target(Path(unit_dir), Path(home))
    found = problems(target, os.geteuid())
    if found:
        fail("; ".join(found), EXIT_USAGE, as_json)
    try:
        texts = {name: render(template(name), home=target.home, python=sys.executable, log_format=log_format)
                 for name in UNITS}
    except ValueError as e:
        fail(str(e), EXIT_USAGE, as_json)
    paths = [target.unit_dir / name for name in UNITS]
    foreign = [str(p) for p in paths if p.exists() and not ours(p)]
    if foreign:   # checked before the home is created or a unit written: a refusal changes nothing
        fail(f"{', '.join(foreign)} exists and was not written by stockade; move it away first", EXIT_USAGE, as_json)
    h = Home.at(target.home)
    try:
        created = wiring.init_home(h, "personal")
    except (ConfigError, StockadeError, wiring.StartupFailed) as e:
        fail(f"cannot create the home {h.root}: {e}", 3, as_json)
    written = []
    for name, text in texts.items():
        path = target.unit_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(str(path))
    out: dict[str, Any] = {"home": str(h.root), "created": created, "units": written, "enabled": [],
                           "started": []}
    out.update(_enable(target, enable_perimeter, no_enable))
    emit(out, as_json, _render_install)


def _enable(target: Target, perimeter: bool, no_enable: bool) -> dict[str, Any]:
    units = [GATEWAY, PERIMETER] if perimeter else [GATEWAY]
    if no_enable:
        return {"enabled": [], "note": "not enabled (--no-enable)"}
    if target.unit_dir != Path(DEFAULT_UNIT_DIR) or not systemd_running():
        why = ("systemd is not running this machine (not PID 1)" if target.unit_dir == Path(DEFAULT_UNIT_DIR)
               else f"units were written to {target.unit_dir}, not {DEFAULT_UNIT_DIR}")
        return {"enabled": [], "note": f"{why}: enabling skipped; on the systemd host run "
                                       f"`systemctl daemon-reload && systemctl enable --now {' '.join(units)}`"}
    for args in (("daemon-reload",), ("enable", *units)):
        rc, text = _systemctl(*args)
        if rc != 0:
            fail(f"systemctl {' '.join(args)} failed: {text}", 3)
    return {"enabled": units, "note": f"start it: systemctl start {GATEWAY}"}


def _render_install(d: dict[str, Any]) -> None:
    click.echo(f"data home: {d['home']}")
    for c in d["created"]:
        click.echo(f"  created {c}")
    for u in d["units"]:
        click.echo(f"wrote {u}")
    if d["enabled"]:
        click.echo(f"enabled: {', '.join(d['enabled'])}")
    click.echo(d["note"])


@service_group.command("uninstall")
@_unit_dir_option
@json_option
def uninstall(unit_dir: str, as_json: bool) -> None:
    """Disable and remove the units this command wrote; the data home stays."""
    d = Path(unit_dir)
    if os.geteuid() != 0:
        fail("service uninstall needs root (run it with sudo)", EXIT_USAGE, as_json)
    if not d.is_dir():
        fail(f"unit directory {d} does not exist (pass --unit-dir)", EXIT_USAGE, as_json)
    present = [name for name in UNITS if (d / name).exists()]
    foreign = [name for name in present if not ours(d / name)]
    if foreign:
        fail(f"{', '.join(str(d / n) for n in foreign)} not written by stockade; left alone", EXIT_USAGE, as_json)
    disabled: list[str] = []
    if present and d == Path(DEFAULT_UNIT_DIR) and systemd_running():
        _systemctl("disable", "--now", *present)
        disabled = present
    for name in present:
        (d / name).unlink()
    if disabled:
        _systemctl("daemon-reload")
    emit({"removed": [str(d / n) for n in present], "disabled": disabled,
          "note": "the data home is kept (remove it yourself once you no longer need its audit log)"},
         as_json, lambda o: click.echo("\n".join([*(f"removed {p}" for p in o["removed"]), o["note"]])))


def unit_state(unit_dir: Path, name: str, home: Path | None) -> dict[str, Any]:
    path = unit_dir / name
    st: dict[str, Any] = {"unit": name, "path": str(path), "installed": path.exists()}
    if path.exists():
        st["written_by_stockade"] = ours(path)
    if unit_dir == Path(DEFAULT_UNIT_DIR) and systemd_running():
        st["enabled"] = _systemctl("is-enabled", name)[1] or "unknown"
        st["active"] = _systemctl("is-active", name)[1] or "unknown"
    if name == GATEWAY and home is not None:
        st["gateway_answers"] = admin.running(Home.at(home))
    return st


@service_group.command("status")
@_unit_dir_option
@click.option("--home", type=click.Path(), default=None, help="Data home (default: the one in the unit).")
@json_option
def status_cmd(unit_dir: str, home: str | None, as_json: bool) -> None:
    """Are the units installed (and, under systemd, enabled and active)? Exit 1 when not installed."""
    d = Path(unit_dir)
    if not d.is_dir():
        fail(f"unit directory {d} does not exist (pass --unit-dir)", EXIT_USAGE, as_json)
    h = Path(home) if home else _home_of(d / GATEWAY)
    units = [unit_state(d, name, h) for name in UNITS]
    out = {"units": units, "home": str(h) if h else None, "systemd": systemd_running()}

    def show(o: dict[str, Any]) -> None:
        for u in o["units"]:
            extra = " ".join(f"{k}={u[k]}" for k in ("enabled", "active", "gateway_answers") if k in u)
            click.echo(f"{u['unit']:<28} {'installed' if u['installed'] else 'not installed':<14} {extra}")
        if not o["systemd"]:
            click.echo("(systemd is not PID 1 here: enabled/active are not known)")

    emit(out, as_json, show)
    if not units[0]["installed"]:
        sys.exit(1)


def _home_of(unit: Path) -> Path | None:
    """The data home a written gateway unit serves (its STOCKADE_HOME)."""
    try:
        for line in unit.read_text().splitlines():
            if line.startswith("Environment=STOCKADE_HOME="):
                return Path(line.split("=", 2)[2])
    except OSError:
        return None
    return None


def register(cli: click.Group) -> None:
    cli.add_command(service_group)
