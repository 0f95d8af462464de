"""vault.db: the SQLite shell around the format (docs/design.md "Formats").

Every write that changes key material is one SQLite transaction (BEGIN IMMEDIATE ... COMMIT):
`init`, `put`, `rekey`. A kill -9 at any instant leaves the previous or the next state, never a
mix, because SQLite's journal makes the transaction atomic and the rekey rewrites the kdf row,
the verifier and every secret in the same transaction.

Format 2 binds each secret to agents (`agents`: names, or `["*"]` for all) and records whether
the owner disclosed it to them (`disclosed`: required for a scope that hands the value to code
the agent controls); both are in the row's associated data. A format 1 vault is migrated when
it is opened: the two columns are added, its rows keep `agents` NULL (= every agent, their
format 1 associated data still verifies) and `disclosed` 0, and `vault list` warns about them.
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
        last_used INTEGER,
        agents TEXT,
        disclosed INTEGER NOT NULL DEFAULT 0
    )""",
)
_SELECT = "SELECT name, scope, hosts, nonce, ciphertext, created, updated, last_used, agents, disclosed FROM secrets"
LEGACY_WARNING = ("from a vault made before secrets were bound to agents: every agent may use it, and it is not "
                  "disclosed (process.run refuses it); re-bind it with `stockade vault set NAME --agent ...`")


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
    agents: list[str] | None = None     # None: a format 1 row (every agent)
    disclosed: bool = False

    @property
    def aad(self) -> bytes:
        return F.row_aad(self.name, self.scope, self.hosts, self.agents, self.disclosed)

    def bound_to(self, agent: str) -> bool:
        return self.agents is None or F.ALL_AGENTS in self.agents or agent in self.agents

    def public(self) -> dict[str, Any]:
        """What `vault list` and the dashboard show: never the value."""
        out: dict[str, Any] = {"name": self.name, "scope": self.scope, "hosts": self.hosts,
                               "agents": self.agents if self.agents is not None else [F.ALL_AGENTS],
                               "disclosed": self.disclosed, "created": self.created, "updated": self.updated,
                               "last_used": self.last_used}
        if self.agents is None:
            out["warning"] = LEGACY_WARNING
        return out


def _corrupt(msg: str) -> StockadeError:
    return err("VaultCorrupt", f"vault.db: {msg}",
               [{"action": "restore_backup", "description": "Restore vault.db from a backup; `stockade doctor` "
                 "shows what is damaged."}])


def _row(r: tuple[Any, ...]) -> Row:
    name, scope, hosts, nonce, ct, created, updated, last_used, agents, disclosed = r
    try:
        sc, ho = json.loads(scope), json.loads(hosts)
        ag = None if agents is None else json.loads(agents)
        if not (isinstance(sc, list) and isinstance(ho, list) and all(isinstance(x, str) for x in sc + ho)):
            raise ValueError
        if ag is not None and not (isinstance(ag, list) and ag and all(isinstance(x, str) for x in ag)):
            raise ValueError
    except (ValueError, TypeError):
        raise _corrupt(f"secret {name!r}: scope/hosts/agents are not JSON lists of strings") from None
    if not isinstance(nonce, bytes) or not isinstance(ct, bytes):
        raise _corrupt(f"secret {name!r}: nonce/ciphertext are not BLOBs")
    if disclosed not in (0, 1):
        raise _corrupt(f"secret {name!r}: disclosed is not 0 or 1")
    return Row(name, sc, ho, nonce, ct, created, updated, last_used, ag, bool(disclosed))


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
            _migrate(c)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise _corrupt(f"not a readable SQLite database ({e})") from None
        finally:
            os.umask(old)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(str(self.path) + suffix, 0o600)
        return c

    def verify_all(self, key: keys.KeyBuffer) -> int:
        """Every page readable and every secret authentic under `key`; the number of secrets.

        What unseal checks before it keeps the key: a vault that is partly damaged is not
        unsealed at all (it used to be unsealed and then reported as corrupt).
        """
        try:
            bad = [r[0] for r in self.conn().execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        except sqlite3.DatabaseError as e:
            raise _corrupt(f"integrity check failed ({e})") from None
        if bad:
            raise _corrupt(f"integrity check failed ({'; '.join(str(b) for b in bad[:3])})")
        rows = self.rows()
        for r in rows:
            keys.wipe(self.decrypt(key, r))
        return len(rows)

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
            rs = self.conn().execute(_SELECT + " ORDER BY name").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise _corrupt(f"cannot read secrets ({e})") from None
        return [_row(r) for r in rs]

    def row(self, name: str) -> Row | None:
        try:
            r = self.conn().execute(_SELECT + " WHERE name=?", (name,)).fetchone()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise _corrupt(f"cannot read secrets ({e})") from None
        return _row(r) if r else None

    def put(self, key: keys.KeyBuffer, name: str, value: bytes | bytearray, scope: list[str] | None,
            hosts: list[str] | None, *, agents: list[str] | None = None, all_agents: bool = False,
            disclose_to_agent: bool = False, keep_scope: bool = False, must_exist: bool = False) -> Row:
        """Insert or replace one secret (fresh nonce). `keep_scope` = rotate: same scope, hosts,
        agents and disclosure. Otherwise the agents are required (`agents` or `all_agents`), and a
        scope that discloses the value to the agent requires `disclose_to_agent`."""
        name = F.validate_name(name)
        if len(value) > F.MAX_VALUE:
            raise err("InvalidInput", f"a secret value is at most {F.MAX_VALUE} bytes")
        if not self.key_matches(key):
            raise err("VaultSealed", "the vault key in memory does not match vault.db (rekeyed elsewhere?)")
        now = int(time.time())
        with self.transaction() as c:
            old = c.execute("SELECT scope, hosts, created, agents, disclosed FROM secrets WHERE name=?",
                            (name,)).fetchone()
            if must_exist and old is None:
                raise err("SecretNotFound", f"no secret named {name!r}")
            if keep_scope and old is not None:
                sc, ho = json.loads(old[0]), json.loads(old[1])
                ag, disclosed = (None if old[3] is None else json.loads(old[3])), bool(old[4])
            else:
                sc, ho, ag, disclosed = _binding(scope, hosts, agents, all_agents, disclose_to_agent)
            nonce, ct = keys.seal(key, value, F.row_aad(name, sc, ho, ag, disclosed))
            created = old[2] if old else now
            c.execute("INSERT OR REPLACE INTO secrets(name, scope, hosts, nonce, ciphertext, created, updated, "
                      "last_used, agents, disclosed) VALUES (?, ?, ?, ?, ?, ?, ?, "
                      "(SELECT last_used FROM secrets WHERE name=?), ?, ?)",
                      (name, json.dumps(sc), json.dumps(ho), nonce, ct, created, now, name,
                       None if ag is None else json.dumps(ag), int(disclosed)))
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
        pt = keys.open_into(key, row.nonce, row.ciphertext, row.aad)
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
            rows = [_row(r) for r in c.execute(_SELECT + " ORDER BY name").fetchall()]
            n = len(rows)
            for i, r in enumerate(rows):
                pt = self.decrypt(old_key, r)
                try:
                    nonce, ct = keys.seal(new_key, pt, r.aad)
                finally:
                    keys.wipe(pt)
                c.execute("UPDATE secrets SET nonce=?, ciphertext=? WHERE name=?", (nonce, ct, r.name))
                if progress:
                    progress(i + 1, n)
            vn, vct = keys.seal(new_key, F.VERIFIER_PLAINTEXT, F.verifier_aad())
            self._write_meta_in(kdf, vn + vct, conn=c)
        return n


def _binding(scope: Any, hosts: Any, agents: Any, all_agents: bool,
             disclose: bool) -> tuple[list[str], list[str], list[str], bool]:
    """Pure: the checked scope, hosts, agents and disclosure of a new or re-set secret."""
    sc, ho = F.normalize_scope(scope), F.normalize_hosts(hosts)
    if "network.http_request" in sc and not ho:
        raise err("InvalidInput", "a secret scoped to network.http_request needs hosts (where it may be sent)")
    ag = F.normalize_agents(agents, all_agents)
    disclosing = any(F.discloses(s) for s in sc)
    if disclosing and not disclose:
        raise err("InvalidInput", F.disclosure_refusal(sc))
    return sc, ho, ag, disclosing


def _migrate(c: sqlite3.Connection) -> None:
    """Format 1 -> 2 in one transaction: add `agents` and `disclosed` (existing rows: every agent,
    not disclosed). Idempotent; a format 2 file is left untouched."""
    cols = {r[1] for r in c.execute("PRAGMA table_info(secrets)").fetchall()}
    if {"agents", "disclosed"} <= cols:
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        cols = {r[1] for r in c.execute("PRAGMA table_info(secrets)").fetchall()}
        if "agents" not in cols:
            c.execute("ALTER TABLE secrets ADD COLUMN agents TEXT")
        if "disclosed" not in cols:
            c.execute("ALTER TABLE secrets ADD COLUMN disclosed INTEGER NOT NULL DEFAULT 0")
        if c.execute("SELECT count(*) FROM vault_meta WHERE key='verifier'").fetchone()[0]:
            c.execute("INSERT OR REPLACE INTO vault_meta(key, value) VALUES ('format', ?)", (F.FORMAT_VERSION,))
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


def derive_new(passphrase: bytearray, into: keys.KeyBuffer) -> F.KdfParams:
    """A fresh salt and the key it gives (for init and rekey)."""
    kdf = F.KdfParams(os.urandom(F.SALT_LEN))
    keys.derive_into(passphrase, kdf, into)
    return kdf
