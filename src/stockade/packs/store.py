"""Trusted publishers and installed packs (stockade.db), and the read-only store.

Installing is all-or-nothing: the pack is verified, its dependencies installed and every file
written into a temporary directory beside the store, which is then renamed into
`packs/<name>/<version>/` and recorded in one transaction. A failure at any step leaves nothing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade import __version__
from stockade.core import db, volume
from stockade.core.errors import err
from stockade.core.home import Home
from stockade.packs import tree
from stockade.packs.manifest import Verified, check_pack_name, pack_error, verify, version_tuple
from stockade.packs.tree import deps_digest

db.SCHEMA.extend([
    """CREATE TABLE IF NOT EXISTS pack_publishers (
        key_id TEXT PRIMARY KEY, name TEXT NOT NULL, pubkey BLOB NOT NULL,
        trusted_at INTEGER NOT NULL, revoked_at INTEGER)""",
    """CREATE TABLE IF NOT EXISTS packs (
        name TEXT PRIMARY KEY, version TEXT NOT NULL, publisher TEXT NOT NULL, key_id TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL, deps_sha256 TEXT, installed_at INTEGER NOT NULL,
        highest_version TEXT NOT NULL, removed_at INTEGER)""",
])


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    publisher: str
    key_id: str
    manifest_sha256: str
    deps_sha256: str | None
    installed_at: int
    replaced: tuple[str, str] | None = None   # (key id, publisher) this install took the name from

    def path(self, home: Home) -> Path:
        return home.packs / self.name / self.version


# -- trust ---------------------------------------------------------------------------------------
def trust(conn: sqlite3.Connection, name: str, raw: bytes, kid: str) -> None:
    conn.execute("INSERT INTO pack_publishers(key_id, name, pubkey, trusted_at) VALUES (?,?,?,?) "
                 "ON CONFLICT(key_id) DO UPDATE SET name=excluded.name, revoked_at=NULL",
                 (kid, name, raw, int(time.time())))


def untrust(conn: sqlite3.Connection, name_or_kid: str) -> int:
    cur = conn.execute("UPDATE pack_publishers SET revoked_at=? WHERE (name=? OR key_id=?) AND revoked_at IS NULL",
                       (int(time.time()), name_or_kid, name_or_kid))
    if cur.rowcount == 0:
        raise err("InvalidInput", f"no trusted publisher or key {name_or_kid!r}")
    return cur.rowcount


def trusted_keys(conn: sqlite3.Connection) -> dict[str, tuple[str, bytes]]:
    rows = conn.execute("SELECT key_id, name, pubkey FROM pack_publishers WHERE revoked_at IS NULL").fetchall()
    return {k: (n, bytes(p)) for k, n, p in rows}


def publishers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT key_id, name, trusted_at, revoked_at FROM pack_publishers ORDER BY name").fetchall()
    return [{"key_id": k, "name": n, "trusted_at": t, "revoked": r is not None} for k, n, t, r in rows]


# -- installed packs ---------------------------------------------------------------------------------
def installed(conn: sqlite3.Connection) -> list[Installed]:
    rows = conn.execute("SELECT name, version, publisher, key_id, manifest_sha256, deps_sha256, installed_at "
                        "FROM packs WHERE removed_at IS NULL ORDER BY name").fetchall()
    return [Installed(*r) for r in rows]


def verify_source(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> Verified:
    files, sig = tree.read_any(path)
    if sig is None:
        raise pack_error("missing (sign the pack with `stockade pack sign`)", "SIGNATURE")
    return verify(files, sig, trusted_keys(conn))


def binding(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
    """(key id, publisher) a pack name is bound to: the key that first installed it, kept after
    removal, moved only by an explicit `--new-publisher` install. None if never installed."""
    r = conn.execute("SELECT key_id, publisher FROM packs WHERE name=?", (name,)).fetchone()
    return (r[0], r[1]) if r is not None else None


def check_binding(name: str, bound: tuple[str, str] | None, v: Verified, new_publisher: bool) -> None:
    """Pure: a second publisher's pack may not silently take over a name (and with it every rule,
    grant and vault scope keyed on `<name>.*`)."""
    if bound is None or bound[0] == v.key_id or new_publisher:
        return
    raise pack_error(f"{name} belongs to publisher {bound[1]!r} (key {bound[0]}), which first installed it; "
                     f"this one is signed by {v.publisher!r} (key {v.key_id}). If you mean to hand the name "
                     "(and every rule, grant and secret scope on it) to the new publisher, install with "
                     "--new-publisher", "SIGNATURE")


def install(home: Home, conn: sqlite3.Connection, path: str | os.PathLike[str], *,
            allow_downgrade: bool = False, builtin_names: set[str] | None = None,
            log: Any = None, new_publisher: bool = False, upstreams: set[str] | None = None) -> Installed:
    files, sig = tree.read_any(path)
    if sig is None:
        raise pack_error("missing (sign the pack with `stockade pack sign`)", "SIGNATURE")
    v = verify(files, sig, trusted_keys(conn))
    spec = v.spec
    check_pack_name(spec.name, {n.split(".", 1)[0] for n in builtin_names or ()}, upstreams or ())
    if version_tuple(spec.min_stockade) > version_tuple(__version__):
        raise err("InvalidInput", f"{spec.name} needs stockade >= {spec.min_stockade} (this is {__version__})")
    bound = binding(conn, spec.name)
    check_binding(spec.name, bound, v, new_publisher)
    row = conn.execute("SELECT version, highest_version, manifest_sha256, removed_at FROM packs WHERE name=?",
                       (spec.name,)).fetchone()
    if row is not None:
        cur, highest, msha, removed = row
        if removed is None and cur == spec.version:
            if msha == v.manifest_sha256:
                return _get(conn, spec.name)
            raise pack_error(f"{spec.name} {spec.version} is installed with different content; "
                             "publish a new version", "pack.yaml")
        if version_tuple(spec.version) < version_tuple(highest) and not allow_downgrade:
            raise pack_error(f"{spec.version} is older than {highest}, the highest version installed before "
                             "(replayed older release?); use --allow-downgrade if you mean it", "pack.yaml")
    taken = set(builtin_names or ())
    for other in installed(conn):
        if other.name != spec.name:
            taken |= _capability_names(home, other)
    for c in spec.capabilities:
        if c.name in taken:
            raise err("InvalidInput", f"capability {c.name} already exists")

    volume.ensure_mounted(home)      # after a reboot, before the gateway: write into the volume, not under it
    home.packs.mkdir(mode=0o700, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=home.packs))
    try:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        (tmp / tree.SIGNATURE).write_bytes(sig)
        deps_sha = None
        if "requirements.lock" in files:
            deps_sha = _install_deps(tmp, log)
        _seal(tmp)
        dest = home.packs / spec.name / spec.version
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        if dest.exists():
            _rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        _rmtree(tmp)
        raise
    highest = spec.version if row is None or version_tuple(spec.version) > version_tuple(row[1]) else row[1]
    now = int(time.time())
    with _tx(conn):
        conn.execute("INSERT INTO packs(name, version, publisher, key_id, manifest_sha256, deps_sha256, installed_at,"
                     " highest_version) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET"
                     " version=excluded.version,"
                     " publisher=excluded.publisher, key_id=excluded.key_id, manifest_sha256=excluded.manifest_sha256,"
                     " deps_sha256=excluded.deps_sha256, installed_at=excluded.installed_at,"
                     " highest_version=excluded.highest_version, removed_at=NULL",
                     (spec.name, spec.version, v.publisher, v.key_id, v.manifest_sha256, deps_sha, now, highest))
    got = _get(conn, spec.name)
    return dataclasses.replace(got, replaced=bound) if bound is not None and bound[0] != v.key_id else got


def remove(home: Home, conn: sqlite3.Connection, name: str) -> Installed:
    """Unregister and delete the files; the highest version seen is kept (rollback protection)."""
    pk = _get(conn, name)
    with _tx(conn):
        conn.execute("UPDATE packs SET removed_at=? WHERE name=?", (int(time.time()), name))
    _rmtree(home.packs / name)
    return pk


def _get(conn: sqlite3.Connection, name: str) -> Installed:
    r = conn.execute("SELECT name, version, publisher, key_id, manifest_sha256, deps_sha256, installed_at "
                     "FROM packs WHERE name=? AND removed_at IS NULL", (name,)).fetchone()
    if r is None:
        raise err("InvalidInput", f"no installed pack named {name!r}")
    return Installed(*r)


def _capability_names(home: Home, pk: Installed) -> set[str]:
    from stockade.packs.manifest import parse_pack_yaml

    try:
        spec = parse_pack_yaml((pk.path(home) / "pack.yaml").read_text())
    except Exception:
        return set()
    return {c.name for c in spec.capabilities}


def _install_deps(tmp: Path, log: Any) -> str | None:
    """pip --require-hashes --no-deps --only-binary :all: into the pack's private deps/."""
    deps = tmp / tree.DEPS_DIR
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           "--require-hashes", "--no-deps", "--only-binary", ":all:", "--no-compile", "--target", str(deps),
           "-r", str(tmp / "requirements.lock")]
    if log:
        log("installing dependencies from requirements.lock (hash-checked wheels only)")
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise pack_error("dependency install failed: " + " | ".join(tail), "requirements.lock", "InvalidInput")
    for bad in list(deps.rglob("*.pth")) + list(deps.rglob("__pycache__")):
        if bad.name.endswith(".pth"):
            raise pack_error(".pth files in dependencies are refused", str(bad.relative_to(tmp)), "InvalidInput")
        shutil.rmtree(bad, ignore_errors=True)
    return deps_digest(deps)


def _seal(root: Path) -> None:
    """Read-only store: files 0444, directories 0555 (the sandbox's unprivileged uid may read)."""
    for p in sorted(root.rglob("*"), reverse=True):
        os.chmod(p, 0o555 if p.is_dir() else 0o444, follow_symlinks=False)
    os.chmod(root, 0o555)  # noqa: S103 - read-only for everyone; the 0700 packs/ dir fences it


def _rmtree(p: Path) -> None:
    if not p.exists():
        return
    for sub in [p, *p.rglob("*")]:
        with contextlib.suppress(OSError):
            if sub.is_dir() and not sub.is_symlink():
                os.chmod(sub, 0o700)
    shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _tx(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def runner_info(home: Home, conn: sqlite3.Connection, pk: Installed,
                entries: dict[str, str] | None = None, now: float | None = None) -> dict[str, Any]:
    """What the sandboxed runner needs to verify the pack on its own (passed per call).

    `entries` (capability -> module:function) may come from the caller's parsed pack.yaml. `now`
    is the gateway's clock at this call: the runner refuses a signature expired by then."""
    r = conn.execute("SELECT pubkey, revoked_at FROM pack_publishers WHERE key_id=?", (pk.key_id,)).fetchone()
    if r is None or r[1] is not None:
        raise pack_error(f"publisher key {pk.key_id} of {pk.name} is no longer trusted", "SIGNATURE")
    if entries is None:
        from stockade.packs.manifest import parse_pack_yaml

        spec = parse_pack_yaml((pk.path(home) / "pack.yaml").read_text())
        entries = {c.name: c.entry for c in spec.capabilities}
    return {"name": pk.name, "version": pk.version, "publisher": pk.publisher, "key_id": pk.key_id,
            "entries": entries,
            "pubkey": base64.b64encode(bytes(r[0])).decode(), "manifest_sha256": pk.manifest_sha256,
            "deps_sha256": pk.deps_sha256, "host_path": str(pk.path(home)), "dir": "/pack",
            "now": time.time() if now is None else now}
