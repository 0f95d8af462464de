"""`stockade release build`: the signed, reproducible release (what `make release` runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stockade.cli.common import emit, fail_error, json_option
from stockade.cli.progress import tracked
from stockade.core.errors import StockadeError


@click.group()
def release() -> None:
    """Build the signed release (wheels, manifest, signature)."""


@release.command("build")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The publisher's Ed25519 private key (PEM file; passphrase from $STOCKADE_RELEASE_KEY_PASSPHRASE).")
@click.option("--out", default="dist/release", show_default=True, type=click.Path(file_okay=False))
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--commit", default="HEAD", show_default=True, help="The commit to build (never the work tree).")
@click.option("--lock", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Dependency lock (default: REPO/requirements.lock).")
@click.option("--wheelhouse", default=None, type=click.Path(file_okay=False, exists=True),
              help="Take the locked wheels from this directory only (offline; hashes still checked).")
@json_option
def build_cmd(key_path: str, out: str, repo: str, commit: str, lock: str | None, wheelhouse: str | None,
              as_json: bool) -> None:
    """Build COMMIT reproducibly and sign its manifest of every file the install puts on disk."""
    from stockade.release import build, keys

    try:
        key = keys.load_private(Path(key_path))
        with tracked("release build", as_json) as t:
            r = build.build_release(repo=Path(repo), out=Path(out), key=key, lock=Path(lock) if lock else None,
                                    commit=commit, wheelhouse=Path(wheelhouse) if wheelhouse else None,
                                    python=sys.executable, progress=t.step)
    except StockadeError as e:
        fail_error(e, as_json)
    data = {"version": r.version, "commit": r.commit, "wheel": str(r.wheel), "manifest": str(r.manifest),
            "signature": str(r.signature), "key": keys.key_id(key.public_key()),
            "pinned_key": keys.key_id(keys.PUBLISHER_KEY)}
    emit(data, as_json, lambda d: click.echo(
        f"stockade {d['version']} ({d['commit'][:12]}) built\n  wheel     {d['wheel']}\n  manifest  {d['manifest']}\n"
        f"  signature {d['signature']} (key {d['key']})"
        + ("" if d["key"] == d["pinned_key"] else "\n  WARNING: not the pinned publisher key; installs refuse it")))


def register(cli: click.Group) -> None:
    cli.add_command(release)
