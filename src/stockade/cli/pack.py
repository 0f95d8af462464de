"""`stockade pack keygen|sign|verify|trust|untrust|install|list|remove`."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from stockade.cli.common import emit, fail, fail_error, home_option, json_option, need_home
from stockade.cli.progress import tracked
from stockade.core.errors import ConfigError, StockadeError


def _passphrase(path: str | None, confirm: bool = False) -> bytes | None:
    if path:
        return Path(path).read_bytes().rstrip(b"\n")
    env = os.environ.get("STOCKADE_PACK_PASSPHRASE")
    return env.encode() if env else None


def _notify_server(home: Any, name: str | None = None) -> bool:
    from stockade.core import admin

    if not admin.running(home):
        return False
    admin.call(home, "packs.reload", {"name": name} if name else {})
    return True


def _audit(home: Any, rec: dict[str, Any]) -> None:
    try:
        from stockade.audit.writer import append_offline_or_admin
    except ImportError:
        return
    append_offline_or_admin(home, rec)


@click.group()
def pack() -> None:
    """Signed packs: third-party capabilities that run only while their signature verifies."""


@pack.command()
@click.option("--out", "prefix", required=True, help="Writes PREFIX.key (0600) and PREFIX.pub.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="Encrypt the private key.")
@json_option
def keygen(prefix: str, passphrase_file: str | None, as_json: bool) -> None:
    """Create a publisher key pair (Ed25519)."""
    from stockade.packs.keys import keygen as kg

    try:
        k, p, kid = kg(Path(prefix), _passphrase(passphrase_file))
    except StockadeError as e:
        fail_error(e, as_json)
    emit({"key": str(k), "pub": str(p), "key_id": kid}, as_json,
         lambda d: click.echo(f"private key {d['key']} (keep it secret)\npublic key  {d['pub']}\nkey id      {kid}"))


@pack.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--passphrase-file", type=click.Path(dir_okay=False))
@click.option("--expires-days", type=int, default=None, help="Signature expiry (freeze protection).")
@click.option("--tarball", type=click.Path(dir_okay=False), default=None, help="Also write a signed .tar.gz.")
@json_option
def sign(directory: str, key_path: str, passphrase_file: str | None, expires_days: int | None,
         tarball: str | None, as_json: bool) -> None:
    """Sign a pack directory: writes DIR/SIGNATURE over every file's path, size and SHA-256."""
    from stockade.packs import tree
    from stockade.packs.keys import load_private
    from stockade.packs.manifest import build_manifest, canonical, key_id, parse_pack_yaml
    from stockade.packs.manifest import sign as do_sign

    try:
        key = load_private(Path(key_path), _passphrase(passphrase_file))
        files, _ = tree.read_dir(directory, skip=(tree.DEPS_DIR,))
        if "pack.yaml" not in files:
            fail("pack.yaml: missing", 2, as_json)
        spec = parse_pack_yaml(files["pack.yaml"].decode(), str(Path(directory) / "pack.yaml"))
        if "requirements.lock" in files:
            from stockade.packs.manifest import check_lockfile

            check_lockfile(files["requirements.lock"].decode())
        expires = None
        if expires_days:
            expires = (datetime.now(UTC) + timedelta(days=expires_days)).isoformat(timespec="seconds")
        manifest = build_manifest(spec.name, spec.version, files, expires)
        sig = do_sign(manifest, key)
        (Path(directory) / tree.SIGNATURE).write_bytes(sig)
        if tarball:
            Path(tarball).write_bytes(tree.tarball_bytes(files, sig, f"{spec.name}-{spec.version}"))
    except (StockadeError, ConfigError) as e:
        fail_error(e, as_json)
    import hashlib

    emit({"pack": spec.name, "version": spec.version, "files": len(files), "key_id": key_id(key.public_key()),
          "manifest_sha256": hashlib.sha256(canonical(manifest)).hexdigest(), "tarball": tarball}, as_json,
         lambda d: click.echo(f"signed {d['pack']} {d['version']} ({d['files']} files) with key {d['key_id']}"))


@pack.command()
@click.argument("source", type=click.Path(exists=True))
@home_option
@json_option
def verify(source: str, home: str | None, as_json: bool) -> None:
    """Verify a pack directory or tarball against the trusted publishers (exit 1 if it fails)."""
    from stockade.packs import store

    h = need_home(home)
    try:
        v = store.verify_source(h.db(), source)
    except StockadeError as e:
        if as_json:
            emit({"valid": False, "error": e.to_dict()}, True)
        else:
            click.echo(f"INVALID: {e.message}", err=True)
        raise SystemExit(1) from None
    emit({"valid": True, "pack": v.spec.name, "version": v.spec.version, "publisher": v.publisher,
          "key_id": v.key_id, "manifest_sha256": v.manifest_sha256}, as_json,
         lambda d: click.echo(f"valid: {d['pack']} {d['version']} signed by {d['publisher']} ({d['key_id']})"))


@pack.command()
@click.argument("pubkey", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Publisher name (must match pack.yaml's publisher).")
@home_option
@json_option
def trust(pubkey: str, name: str, home: str | None, as_json: bool) -> None:
    """Trust a publisher's public key."""
    import re

    from stockade.packs import store
    from stockade.packs.keys import load_public

    h = need_home(home)
    if not re.match(r"^[a-z][a-z0-9-]{0,63}$", name):
        fail(f"invalid publisher name {name!r}", 2, as_json)
    try:
        raw, kid = load_public(Path(pubkey))
    except StockadeError as e:
        fail_error(e, as_json)
    store.trust(h.db(), name, raw, kid)
    _audit(h, {"kind": "pack.publisher_trusted", "publisher": name, "key_id": kid})
    emit({"publisher": name, "key_id": kid}, as_json, lambda d: click.echo(f"trusted {name} ({kid})"))


@pack.command()
@click.argument("publisher")
@home_option
@json_option
def untrust(publisher: str, home: str | None, as_json: bool) -> None:
    """Stop trusting a publisher (by name or key id); its packs stop running at once."""
    from stockade.packs import store

    h = need_home(home)
    try:
        n = store.untrust(h.db(), publisher)
    except StockadeError as e:
        fail_error(e, as_json)
    _audit(h, {"kind": "pack.publisher_untrusted", "publisher": publisher})
    emit({"untrusted": publisher, "keys": n}, as_json, lambda d: click.echo(f"untrusted {publisher}"))


def _upstream_names(h: Any) -> set[str]:
    """Declared upstream servers (their tools are `<server>.<tool>`): a pack may not take such a
    name, except the servers that run a pack (`pack:`), which name theirs."""
    from stockade.upstream import config as upstream_config

    try:
        return {n for n, s in upstream_config.load(h).items() if s.pack is None}
    except ConfigError:
        return set()


@pack.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--allow-downgrade", is_flag=True, help="Accept a version lower than one installed before.")
@click.option("--new-publisher", is_flag=True,
              help="Hand an installed pack name to a different publisher key (audited).")
@home_option
@json_option
def install(source: str, allow_downgrade: bool, new_publisher: bool, home: str | None, as_json: bool) -> None:
    """Verify and install a pack (directory or tarball) into the read-only store."""
    from stockade.capabilities.registry import load_registry
    from stockade.packs import store

    h = need_home(home)
    conn = h.db()
    try:
        with tracked(f"pack install {source}", as_json) as t:
            t.step("verifying the signature and every file")

            def log(m: str) -> None:
                t.step(m)
                click.echo(m, err=True)

            pk = store.install(h, conn, source, allow_downgrade=allow_downgrade,
                               builtin_names={d.name for d in load_registry().all()}, log=None if as_json else log,
                               new_publisher=new_publisher, upstreams=_upstream_names(h))
    except (StockadeError, ConfigError) as e:
        fail_error(e, as_json)
    old = pk.replaced
    if old is not None:
        _audit(h, {"kind": "pack.publisher_changed", "pack": pk.name, "from_publisher": old[1],
                   "from_key_id": old[0], "to_publisher": pk.publisher, "to_key_id": pk.key_id})
    _audit(h, {"kind": "pack.installed", "pack": pk.name, "version": pk.version, "publisher": pk.publisher,
               "key_id": pk.key_id, "manifest_sha256": pk.manifest_sha256})
    live = False
    try:
        live = _notify_server(h, pk.name)
    except StockadeError as e:
        click.echo(f"warning: installed, but the running server refused it: {e.message}", err=True)
    emit({"pack": pk.name, "version": pk.version, "publisher": pk.publisher, "path": str(pk.path(h)),
          "live": live}, as_json,
         lambda d: click.echo(f"installed {d['pack']} {d['version']} from {d['publisher']}"
                              + (" (live)" if live else " (takes effect when the server starts)")))


@pack.command("list")
@home_option
@json_option
def list_(home: str | None, as_json: bool) -> None:
    """Installed packs and trusted publishers."""
    from stockade.packs import store

    h = need_home(home)
    conn = h.db()
    data = {"packs": [{"name": p.name, "version": p.version, "publisher": p.publisher, "key_id": p.key_id}
                      for p in store.installed(conn)], "publishers": store.publishers(conn)}

    def render(d: dict[str, Any]) -> None:
        for p in d["packs"]:
            click.echo(f"{p['name']:<24} {p['version']:<10} {p['publisher']}")
        if not d["packs"]:
            click.echo("no packs installed")
        for p in d["publishers"]:
            click.echo(f"publisher {p['name']:<20} {p['key_id']} {'REVOKED' if p['revoked'] else 'trusted'}")

    emit(data, as_json, render)


@pack.command()
@click.argument("name")
@home_option
@json_option
def remove(name: str, home: str | None, as_json: bool) -> None:
    """Remove an installed pack (its capabilities disappear at once on a running server)."""
    from stockade.packs import store

    h = need_home(home)
    try:
        pk = store.remove(h, h.db(), name)
    except StockadeError as e:
        fail_error(e, as_json)
    _audit(h, {"kind": "pack.removed", "pack": pk.name, "version": pk.version})
    with contextlib.suppress(StockadeError):
        _notify_server(h, name)
    emit({"removed": name, "version": pk.version}, as_json, lambda d: click.echo(f"removed {name}"))


def register(cli: click.Group) -> None:
    cli.add_command(pack)
