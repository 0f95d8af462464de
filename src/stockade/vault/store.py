"""vault.db: the SQLite shell around the format (DESIGN.md §3).

Every write that changes key material is one SQLite transaction (BEGIN IMMEDIATE ... COMMIT):
`init`, `put`, `rekey`. A kill -9 at any instant leaves the previous or the next state, never a
mix, because SQLite's journal makes the transaction atomic and the rekey rewrites the kdf row,
the verifier and every secret in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.core.errors import StockadeError, err
from stockade.vault import format as F
from stockade.vault import keys

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS vault_meta (key TEXT PRIMARY KEY, value BLOB)",
    """CREATE TABLE IF NOT EXISTS secrets (
        name TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        hosts TEXT NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        last_used INTEGER
    )""",
)


@dataclass(frozen=True)
class Row:
    name: str
    scope: list[str]
    hosts: list[str]
    nonce: bytes
    ciphertext: bytes
    created: int
    updated: int
    last_used: int | None

    def public(self) -> dict[str, Any]:
        """What `vault list` and `secrets.list` show: never the value."""
        return {"name": self.name, "scope": self.scope, "hosts": self.hosts, "created": self.created,
                "updated": self.updated, "last_used": self.last_used}


def _corrupt(msg: str) -> StockadeError:
    return err("VaultCorrupt", f"vault.db: {msg}",
               [{"action": "restore_backup", "description": "Restore vault.db from a backup; `stockade doctor` "
                 "shows what is damaged."}])


def _row(r: tuple[Any, ...]) -> Row:
    name, scope, hosts, nonce, ct, created, updated, last_used = r
    try:
        sc, ho = json.loads(scope), json.loads(hosts)
        if not (isinstance(sc, list) and isinstance(ho, list) and all(isinstance(x, str) for x in sc + ho)):
            raise ValueError
    except (ValueError, TypeError):
        raise _corrupt(f"secret {name!r}: scope/hosts are not JSON lists of strings") from None
    if not isinstance(nonce, bytes) or not isinstance(ct, bytes):
        raise _corrupt(f"secret {name!r}: nonce/ciphertext are not BLOBs")
    return Row(name, sc, ho, nonce, ct, created, updated, last_used)


class VaultFile:
    """One open vault.db. Cheap to construct; `exists()` before anything else."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    # -- connection ------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists()

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise err("VaultNotInitialized", f"no vault at {self.path}",
                          [{"action": "init", "description": "Create it with `stockade vault init`."}])
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        old = os.umask(0o077)
        try:
            c = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            for s in SCHEMA:
                c.execute(s)
        except sqlite3.DatabaseError as e:
            raise _corrupt(f"not a readable SQLite database ({e})") from None
        finally:
            os.umask(old)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(str(self.path) + suffix, 0o600)
        return c

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        c = self.conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise err("Conflict", "vault.db is busy (another writer); try again") from None
            raise _corrupt(f"write failed ({e})") from None

    # -- meta ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        try:
            return dict(self.conn().execute("SELECT key, value FROM vault_meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise _corrupt(f"cannot read vault_meta ({e})") from None

    def kdf(self) -> F.KdfParams:
        return F.parse_kdf(self.meta().get("kdf"))

    def check_meta(self) -> tuple[F.KdfParams, bytes, bytes]:
        """Structure + checksum of the meta rows (no key needed) -> (kdf, nonce, ciphertext)."""
        m = self.meta()
        if "kdf" not in m or "verifier" not in m:
            raise _corrupt("vault_meta lacks 'kdf' or 'verifier' (an interrupted init?)")
        kdf = F.parse_kdf(m["kdf"])
        ver = m["verifier"]
        nonce, ct = F.split_sealed(ver)
        want = m.get("checksum")
        if want is not None and want != F.checksum(m["kdf"], ver):
            raise _corrupt("vault_meta checksum does not match (kdf or verifier damaged)")
        return kdf, nonce, ct

    # -- key -------------------------------------------------------------------------------
    def unlock(self, passphrase: bytearray, into: keys.KeyBuffer) -> None:
        """Derive the master key into `into` and check it against the verifier.

        WrongPassphrase if the tag does not verify on intact meta rows; VaultCorrupt if the rows
        themselves are damaged (their key-independent checksum fails).
        """
        kdf, nonce, ct = self.check_meta()
        keys.derive_into(passphrase, kdf, into)
        pt = keys.open_into(into, nonce, ct, F.verifier_aad())
        ok = pt is not None and bytes(pt) == F.VERIFIER_PLAINTEXT
        if pt is not None:
            keys.wipe(pt)
        if not ok:
            into.wipe()
            raise err("WrongPassphrase", "the passphrase does not open this vault",
                      [{"action": "retry", "description": "Check the passphrase (and its file's trailing newline)."}])

    def key_matches(self, key: keys.KeyBuffer) -> bool:
        """Is `key` (already loaded) still the vault's key (no rekey happened elsewhere)?"""
        try:
            _kdf, nonce, ct = self.check_meta()
        except StockadeError:
            return False
        pt = keys.open_into(key, nonce, ct, F.verifier_aad())
        if pt is None:
            return False
        keys.wipe(pt)
        return True

    # -- init ------------------------------------------------------------------------------
    def init(self, passphrase: bytearray, into: keys.KeyBuffer) -> None:
        """Create vault.db (0600) with a fresh salt and verifier. Refuses an existing vault."""
        if self.path.exists() and self.path.stat().st_size > 0:
            c = self.conn()
            if c.execute("SELECT count(*) FROM vault_meta WHERE key='verifier'").fetchone()[0]:
                raise err("VaultExists", f"a vault already exists at {self.path}",
                          [{"action": "rekey", "description": "Change its passphrase with `stockade vault rekey`."}])
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        kdf = derive_new(passphrase, into)
        nonce, ct = keys.seal(into, F.VERIFIER_PLAINTEXT, F.verifier_aad())
        self._write_meta_in(kdf, nonce + ct, fresh=True)

    def _write_meta_in(self, kdf: F.KdfParams, verifier: bytes, *, fresh: bool = False,
                       conn: sqlite3.Connection | None = None) -> None:
        kj = kdf.to_json()
        rows = [("format", F.FORMAT_VERSION), ("kdf", kj), ("verifier", verifier),
                ("checksum", F.checksum(kj, verifier))]
        if conn is not None:
            conn.executemany("INSERT OR REPLACE INTO vault_meta(key, value) VALUES (?, ?)", rows)
            return
        with self.transaction() as c:
            if fresh and c.execute("SELECT count(*) FROM vault_meta WHERE key='verifier'").fetchone()[0]:
                raise err("VaultExists", f"a vault already exists at {self.path}")
            c.executemany("INSERT OR REPLACE INTO vault_meta(key, value) VALUES (?, ?)", rows)

    # -- secrets ---------------------------------------------------------------------------
    def rows(self) -> list[Row]:
        try:
            rs = self.conn().execute("SELECT name, scope, hosts, nonce, ciphertext, created, updated, last_used "
                                     "FROM secrets ORDER BY name").fetchall()
        except sqlite3.DatabaseError as e:
            raise _corrupt(f"cannot read secrets ({e})") from None
        return [_row(r) for r in rs]

    def row(self, name: str) -> Row | None:
        try:
            r = self.conn().execute("SELECT name, scope, hosts, nonce, ciphertext, created, updated, last_used "
                                    "FROM secrets WHERE name=?", (name,)).fetchone()
        except sqlite3.DatabaseError as e:
            raise _corrupt(f"cannot read secrets ({e})") from None
        return _row(r) if r else None

    def put(self, key: keys.KeyBuffer, name: str, value: bytes | bytearray, scope: list[str] | None,
            hosts: list[str] | None, *, keep_scope: bool = False, must_exist: bool = False) -> Row:
        """Insert or replace one secret (fresh nonce). `keep_scope` = rotate: same scope and hosts."""
        name = F.validate_name(name)
        if len(value) > F.MAX_VALUE:
            raise err("InvalidInput", f"a secret value is at most {F.MAX_VALUE} bytes")
        if not self.key_matches(key):
            raise err("VaultSealed", "the vault key in memory does not match vault.db (rekeyed elsewhere?)")
        now = int(time.time())
        with self.transaction() as c:
            old = c.execute("SELECT scope, hosts, created FROM secrets WHERE name=?", (name,)).fetchone()
            if must_exist and old is None:
                raise err("SecretNotFound", f"no secret named {name!r}")
            if keep_scope and old is not None:
                sc, ho = json.loads(old[0]), json.loads(old[1])
            else:
                sc, ho = F.normalize_scope(scope), F.normalize_hosts(hosts)
                if "network.http_request" in sc and not ho:
                    raise err("InvalidInput", "a secret scoped to network.http_request needs hosts "
                              "(where it may be sent)")
            nonce, ct = keys.seal(key, value, F.aad(name, sc, ho))
            created = old[2] if old else now
            c.execute("INSERT OR REPLACE INTO secrets(name, scope, hosts, nonce, ciphertext, created, updated, "
                      "last_used) VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT last_used FROM secrets WHERE name=?))",
                      (name, json.dumps(sc), json.dumps(ho), nonce, ct, created, now, name))
        r = self.row(name)
        assert r is not None
        return r

    def remove(self, name: str) -> bool:
        with self.transaction() as c:
            return c.execute("DELETE FROM secrets WHERE name=?", (name,)).rowcount > 0

    def touch(self, names: dict[str, int]) -> None:
        if names:
            with self.transaction() as c:
                c.executemany("UPDATE secrets SET last_used=? WHERE name=? AND (last_used IS NULL OR last_used<?)",
                              [(t, n, t) for n, t in names.items()])

    def decrypt(self, key: keys.KeyBuffer, row: Row) -> bytearray:
        """The plaintext in a bytearray the caller wipes; VaultCorrupt if it does not authenticate."""
        pt = keys.open_into(key, row.nonce, row.ciphertext, F.aad(row.name, row.scope, row.hosts))
        if pt is None:
            raise _corrupt(f"secret {row.name!r} does not authenticate (its row was changed or damaged)")
        return pt

    # -- rekey -----------------------------------------------------------------------------
    def rekey(self, old_key: keys.KeyBuffer, new_passphrase: bytearray, new_key: keys.KeyBuffer,
              progress: Callable[[int, int], None] | None = None) -> int:
        """Re-encrypt everything under a new passphrase (new salt), in one transaction.

        `old_key` must be unlocked. Derivation happens before the transaction (it is slow).
        """
        before = self.meta()
        kdf = derive_new(new_passphrase, new_key)
        return self.rekey_derived(old_key, kdf, new_key, before, progress)

    def rekey_derived(self, old_key: keys.KeyBuffer, kdf: F.KdfParams, new_key: keys.KeyBuffer,
                      before: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> int:
        """The transaction of `rekey`: re-checks that the meta rows did not change since `before`."""
        with self.transaction() as c:
            now = dict(c.execute("SELECT key, value FROM vault_meta").fetchall())
            if now.get("kdf") != before.get("kdf") or now.get("verifier") != before.get("verifier"):
                raise err("Conflict", "the vault changed during the rekey; run it again")
            if not self.key_matches(old_key):
                raise err("WrongPassphrase", "the current passphrase does not open this vault")
            rows = [_row(r) for r in c.execute("SELECT name, scope, hosts, nonce, ciphertext, created, updated, "
                                                "last_used FROM secrets ORDER BY name").fetchall()]
            n = len(rows)
            for i, r in enumerate(rows):
                pt = self.decrypt(old_key, r)
                try:
                    nonce, ct = keys.seal(new_key, pt, F.aad(r.name, r.scope, r.hosts))
                finally:
                    keys.wipe(pt)
                c.execute("UPDATE secrets SET nonce=?, ciphertext=? WHERE name=?", (nonce, ct, r.name))
                if progress:
                    progress(i + 1, n)
            vn, vct = keys.seal(new_key, F.VERIFIER_PLAINTEXT, F.verifier_aad())
            self._write_meta_in(kdf, vn + vct, conn=c)
        return n


def derive_new(passphrase: bytearray, into: keys.KeyBuffer) -> F.KdfParams:
    """A fresh salt and the key it gives (for init and rekey)."""
    kdf = F.KdfParams(os.urandom(F.SALT_LEN))
    keys.derive_into(passphrase, kdf, into)
    return kdf
