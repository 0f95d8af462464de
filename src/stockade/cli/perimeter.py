"""`stockade perimeter serve|keygen|status` and `stockade knock` (docs/design.md "Perimeter")."""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    emit,
    fail,
    fail_error,
    get_home,
    home_option,
    json_option,
    need_home,
)
from stockade.cli.secrets import refused_flag
from stockade.core.errors import ConfigError, StockadeError


@click.group("perimeter")
def perimeter() -> None:
    """Single Packet Authorization: SSH stays invisible until an authenticated packet opens it."""


@perimeter.command("serve")
@home_option
@click.option("--listen", default=None, help="ADDR or ADDR:PORT for SPA (default from stockade.yaml, 0.0.0.0:62201).")
def serve_cmd(home: str | None, listen: str | None) -> None:
    """Install the nftables drop table and listen for SPA packets (root; never replies)."""
    from stockade.perimeter import config as pconfig
    from stockade.perimeter import daemon

    if os.geteuid() != 0:
        fail("perimeter serve needs root (it owns an nftables table)", EXIT_USAGE)
    h = need_home(home)
    try:
        cfg = pconfig.load(h.config_path)
        h.config()
    except ConfigError as e:
        fail_error(e)
    if not cfg.stanzas:
        fail("no perimeter stanzas: run `stockade perimeter keygen` first (serving would lock everyone out)",
             EXIT_USAGE)
    try:
        daemon.parse_listen(listen, cfg)
    except ValueError:
        fail(f"bad --listen {listen!r}", EXIT_USAGE)
    daemon.serve(h, cfg, listen)


@perimeter.command("keygen")
@home_option
@click.option("--name", default=None, help="Stanza name (default: owner, owner-2, ...).")
@click.option("--open", "open_ports", multiple=True, default=("tcp/22",), show_default=True,
              help="proto/port this key may open (repeatable).")
@click.option("--server", default="SERVER_ADDRESS", help="SPA_SERVER written into the fwknoprc stanza.")
@json_option
def keygen_cmd(home: str | None, name: str | None, open_ports: tuple[str, ...], server: str, as_json: bool) -> None:
    """Create keys, add a stanza under `perimeter:` in stockade.yaml, print client settings."""
    from stockade.perimeter import config as pconfig
    from stockade.perimeter import keygen

    h = need_home(home)
    try:
        cfg = pconfig.load(h.config_path)
        if name is None:
            names = {s.name for s in cfg.stanzas}
            name = next(n for n in ["owner", *(f"owner-{i}" for i in range(2, 10_000))] if n not in names)
        stanza = keygen.add_stanza(h.config_path, name, list(open_ports))
    except ConfigError as e:
        fail_error(e, as_json)
    except StockadeError as e:
        fail_error(e, as_json)
    except ValueError as e:  # pydantic: bad --name / --open
        fail(str(e).splitlines()[-1] if str(e) else "invalid input", EXIT_USAGE, as_json)
    out = {"name": stanza.name, "key_base64": stanza.key_base64, "hmac_key_base64": stanza.hmac_key_base64,
           "native_key": stanza.native_key, "open_ports": stanza.open_ports,
           "fwknoprc": keygen.fwknoprc(stanza.name, stanza, server, cfg.port)}

    def render(d: dict[str, Any]) -> None:
        click.echo(f"added stanza {d['name']!r} to {h.config_path}"
                   " (send SIGHUP to `perimeter serve`, or restart it, to load it)\n")
        click.echo(f"native key (for `STOCKADE_KNOCK_KEY=... stockade knock`): {d['native_key']}\n")
        click.echo("~/.fwknoprc stanza for Debian's fwknop client:\n")
        click.echo(d["fwknoprc"])

    emit(out, as_json, render)


@perimeter.command("status")
@home_option
@json_option
def status_cmd(home: str | None, as_json: bool) -> None:
    """Is the daemon running, its counters, and the active grants (grants need root)."""
    h = get_home(home)
    state_path = h.run / "perimeter.json"
    state: dict[str, Any] | None = None
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            state = None
    grants: list[dict[str, Any]] | None = None
    table = False
    if os.geteuid() == 0:
        from stockade.perimeter.nft import Firewall

        fw = Firewall()
        table = fw.exists()
        grants = fw.grants() if table else []
    out = {"running": state is not None, "table_loaded": table, "daemon": state, "grants": grants}
    emit(out, as_json)
    if state is None:
        sys.exit(EXIT_CHECK_FAILED)


def _b64_arg(value: str | None, what: str, as_json: bool) -> bytes:
    if not value:
        fail(f"missing {what}", EXIT_USAGE, as_json)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        fail(f"{what} is not base64", EXIT_USAGE, as_json)


def _own_address(host: str, spa_port: int) -> str:
    """The local address the kernel would use to reach HOST (no packet is sent)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((host, spa_port))
        return s.getsockname()[0]


@click.command("knock")
@click.argument("host")
@click.option("--port", "ports", multiple=True, type=int, help="TCP port to open (default 22; repeatable).")
@click.option("--open", "open_specs", multiple=True, help="proto/port to open, e.g. udp/51820 (repeatable).")
@click.option("--spa-port", default=62201, show_default=True, type=int)
@click.option("--fwknop", "use_fwknop", is_flag=True, help="Send the fwknop-compatible packet instead of native.")
@refused_flag("--key", "STOCKADE_KNOCK_KEY", "--stanza")
@refused_flag("--key-base64", "STOCKADE_KNOCK_KEY_BASE64", "--stanza")
@refused_flag("--hmac-key-base64", "STOCKADE_KNOCK_HMAC_KEY_BASE64", "--stanza")
@click.option("--stanza", default=None, help="Take the keys from this stanza of --home's stockade.yaml.")
@home_option
@click.option("--allow-ip", default=None, help="Address to open for (default: our address towards HOST).")
@click.option("--source", "use_source", is_flag=True,
              help="Ask for 'my source address' (0.0.0.0); the stanza must allow it.")
@click.option("--timeout", "client_timeout", default=0, type=int,
              help="Requested grant seconds (capped by the stanza).")
@click.option("--save-packet", type=click.Path(dir_okay=False), default=None,
              help="Also write the packet to this file.")
@json_option
def knock_cmd(host: str, ports: tuple[int, ...], open_specs: tuple[str, ...], spa_port: int, use_fwknop: bool,
              stanza: str | None, home: str | None, allow_ip: str | None, use_source: bool, client_timeout: int,
              save_packet: str | None, as_json: bool) -> None:
    """Send one SPA packet to HOST (UDP, no reply expected), then connect within the grant time.

    Keys come from $STOCKADE_KNOCK_KEY (native), $STOCKADE_KNOCK_KEY_BASE64 and
    $STOCKADE_KNOCK_HMAC_KEY_BASE64 (fwknop), or --stanza; never from the command line."""
    key, key_base64, hmac_key_base64 = (os.environ.get(v) or None for v in (
        "STOCKADE_KNOCK_KEY", "STOCKADE_KNOCK_KEY_BASE64", "STOCKADE_KNOCK_HMAC_KEY_BASE64"))
    from stockade.perimeter import fwknop, native
    from stockade.perimeter.codec import parse_port

    specs = [f"tcp/{p}" for p in ports] + list(open_specs) or ["tcp/22"]
    try:
        specs = [str(parse_port(s)) for s in specs]
    except ValueError as e:
        fail(str(e), EXIT_USAGE, as_json)
    if not 0 <= client_timeout <= 65535:
        fail("--timeout must be 0..65535", EXIT_USAGE, as_json)
    if stanza:
        from stockade.perimeter import config as pconfig

        try:
            cfg = pconfig.load(need_home(home).config_path)
        except ConfigError as e:
            fail_error(e, as_json)
        st = next((s for s in cfg.stanzas if s.name == stanza), None)
        if st is None:
            fail(f"no perimeter stanza {stanza!r}", EXIT_USAGE, as_json)
        key, key_base64, hmac_key_base64 = st.native_key, st.key_base64, st.hmac_key_base64
    try:
        ip = None if use_source else (allow_ip or _own_address(host, spa_port))
    except OSError as e:
        fail(f"cannot reach {host}: {e.strerror}", EXIT_UNREACHABLE, as_json)
    now = time.time()
    if use_fwknop:
        k = _b64_arg(key_base64, "STOCKADE_KNOCK_KEY_BASE64", as_json)
        hk = _b64_arg(hmac_key_base64, "STOCKADE_KNOCK_HMAC_KEY_BASE64", as_json)
        if ip is not None and ":" in ip:
            fail("the fwknop profile carries IPv4 addresses only", EXIT_USAGE, as_json)
        wire = fwknop.encode(k, hk, ip or "0.0.0.0", specs, timestamp=int(now),  # noqa: S104
                             client_timeout=client_timeout)
    else:
        secret = _b64_arg(key, "STOCKADE_KNOCK_KEY", as_json)
        try:
            nk = native.NativeKey.from_secret(secret)
        except ValueError as e:
            fail(str(e), EXIT_USAGE, as_json)
        wire = native.encode(nk, ip, specs, timestamp=now, client_timeout=client_timeout)
    if save_packet:
        Path(save_packet).write_bytes(wire)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.sendto(wire, (host, spa_port))
    except OSError as e:
        fail(f"send failed: {e.strerror}", EXIT_UNREACHABLE, as_json)
    out = {"sent": True, "host": host, "spa_port": spa_port, "profile": "fwknop" if use_fwknop else "native",
           "allow_ip": ip or "0.0.0.0", "ports": specs, "bytes": len(wire)}  # noqa: S104
    emit(out, as_json, lambda d: click.echo(
        f"sent {d['profile']} SPA ({d['bytes']} bytes) to {d['host']}:{d['spa_port']} for {', '.join(d['ports'])}"
        f" from {d['allow_ip']}; connect now"))


def register(cli: click.Group) -> None:
    cli.add_command(perimeter)
    cli.add_command(knock_cmd)
