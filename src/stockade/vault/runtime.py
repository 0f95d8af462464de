"""The gateway's vault: sealed/unsealed state and the pipeline's SecretsHook.

The master key exists only here, in a KeyBuffer (locked, non-dumpable, not inherited by forks),
from `unseal` until `seal`/shutdown. `resolve` runs in the event loop for each call whose
capability allows secrets: plan (pure) -> scope and host checks -> decrypt -> substitute.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from stockade.audit.redact import SecretValue
from stockade.core.errors import StockadeError, err
from stockade.vault import format as F
from stockade.vault import keys, refs
from stockade.vault.store import Row, VaultFile, derive_new

_SEALED_RECOVERY = [{"action": "ask_owner", "description": "The vault is sealed; the owner must run "
                     "`stockade vault unseal`. Calls that use no secret keep working."}]
TOUCH_EVERY = 10.0


def _not_in_scope(msg: str) -> StockadeError:
    return err("SecretNotInScope", msg, [{"action": "ask_owner", "description": "The owner decides which "
               "capabilities and hosts a secret may be used with (`stockade vault set NAME --scope ... --host ...`)."}])


class Vault:
    """One vault.db, as the running gateway sees it."""

    def __init__(self, path: Path):
        self.file = VaultFile(path)
        self._key: keys.KeyBuffer | None = None
        self._lock = threading.Lock()           # unseal/seal/rekey vs resolve
        self.unsealed_at: float | None = None
        self._used: dict[str, int] = {}
        self._last_touch = 0.0
        self.hardening: dict[str, bool] = {}

    # -- state ----------------------------------------------------------------------------------
    @property
    def sealed(self) -> bool:
        return self._key is None or not self._key.loaded

    def status(self) -> dict[str, Any]:
        init = self.file.exists()
        out: dict[str, Any] = {"initialized": init, "sealed": self.sealed, "path": str(self.file.path)}
        if init:
            try:
                out["secrets"] = len(self.file.rows())
                kdf = self.file.kdf()
                out["kdf"] = {"alg": F.KDF_ALG, "m_kib": kdf.m_kib, "t": kdf.t, "p": kdf.p}
            except StockadeError as e:
                out["error"] = e.to_dict()
        if not self.sealed:
            out["unsealed_at"] = self.unsealed_at
            assert self._key is not None
            out["memory"] = {"mlock": self._key.locked, "dontdump": self._key.dontdump,
                             "dontfork": self._key.dontfork}
        out["process"] = self.hardening
        return out

    def health(self) -> dict[str, Any]:
        st = "ok"
        if self.hardening and not all(self.hardening.values()):
            st = "degraded"
        h: dict[str, Any] = {"status": st, "sealed": self.sealed, "initialized": self.file.exists()}
        h.update({k: v for k, v in self.hardening.items()})
        return h

    def unseal(self, passphrase: bytearray) -> int:
        """Derive, verify, keep. WrongPassphrase / VaultCorrupt / VaultNotInitialized otherwise."""
        kb, n = self.open_key(passphrase)
        self.keep(kb)
        return n

    async def unseal_audited(self, passphrase: bytearray, record: Any) -> int:
        """All or nothing, audited either way: the passphrase is checked and every page and secret
        verified (worker thread), then `vault.unsealed` is recorded, and only then is the key kept.
        Any failure, including the audit write, leaves the vault sealed and records
        `vault.unseal_failed` (best effort when the audit itself is what failed)."""
        try:
            kb, n = await in_thread(self.open_key, passphrase)
        except StockadeError as e:
            await record("vault.unseal_failed", error=e.type, message=e.message)
            raise
        try:
            await record("vault.unsealed", secrets=n)
        except BaseException:
            kb.close()
            raise
        self.keep(kb)
        return n

    def open_key(self, passphrase: bytearray) -> tuple[keys.KeyBuffer, int]:
        """The key, checked against the verifier and every secret, and the number of secrets.

        Runs in a worker thread (Argon2), on its own connection; keeps nothing on failure.
        """
        kb = keys.KeyBuffer()
        f = VaultFile(self.file.path)
        try:
            f.unlock(passphrase, kb)
            n = f.verify_all(kb)
        except BaseException:
            kb.close()
            raise
        finally:
            f.close()
        return kb, n

    def keep(self, kb: keys.KeyBuffer) -> None:
        with self._lock:
            old, self._key = self._key, kb
            self.unsealed_at = time.time()
        if old is not None:
            old.close()

    def seal(self) -> bool:
        """Wipe the key (memset) and unmap it. True if it was unsealed."""
        with self._lock:
            self.flush_used()
            kb, self._key = self._key, None
            self.unsealed_at = None
        if kb is None:
            return False
        was = kb.loaded
        kb.close()
        return was

    def key(self) -> keys.KeyBuffer:
        k = self._key
        if k is None or not k.loaded:
            if not self.file.exists():
                raise err("VaultSealed", "there is no vault yet (the owner runs `stockade vault init`)",
                          _SEALED_RECOVERY)
            raise err("VaultSealed", "the vault is sealed", _SEALED_RECOVERY)
        return k

    # -- owner operations (admin socket) ------------------------------------------------------------
    def put(self, name: str, value: bytes | bytearray, scope: list[str] | None, hosts: list[str] | None,
            *, agents: list[str] | None = None, all_agents: bool = False, disclose_to_agent: bool = False,
            keep_scope: bool = False, must_exist: bool = False) -> Row:
        with self._lock:
            return self.file.put(self.key(), name, value, scope, hosts, agents=agents, all_agents=all_agents,
                                 disclose_to_agent=disclose_to_agent, keep_scope=keep_scope,
                                 must_exist=must_exist)

    def rekey(self, old: bytearray, new: bytearray) -> int:
        """Check `old`, re-encrypt under `new`; a gateway that was unsealed keeps the new key.

        The slow derivations run on a private connection (worker thread); the one transaction
        runs under the lock so no call sees new rows with the old key.
        """
        check, new_kb = keys.KeyBuffer(), keys.KeyBuffer()
        f = VaultFile(self.file.path)
        try:
            f.unlock(old, check)
            before = f.meta()
            kdf = derive_new(new, new_kb)
            with self._lock:
                n = f.rekey_derived(check, kdf, new_kb, before)
                prev, self._key = self._key, (new_kb if self._key is not None else None)
        except BaseException:
            new_kb.close()
            raise
        finally:
            check.close()
            f.close()
        if prev is not None:
            prev.close()
        else:
            new_kb.close()
        return n

    def flush_used(self) -> None:
        used, self._used = self._used, {}
        if used:
            try:
                self.file.touch(used)
            except Exception:
                self._used.update(used)
        self._last_touch = time.monotonic()

    # -- the SecretsHook ----------------------------------------------------------------------------
    def resolve(self, caller: Any, definition: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        p = refs.plan(definition.name, bool(getattr(definition, "secrets", False)), args)
        if not p.names:
            return args, []
        with self._lock:
            key = self.key()
            rows: dict[str, Row] = {}
            for name in sorted(p.names):
                row = self.file.row(name)
                if row is None:
                    raise err("SecretNotFound", f"no secret named {name!r} in the vault",
                              [{"action": "list_secrets", "description": "secrets.list shows the names you may "
                                "reference; secrets.request asks the owner for a new one."}])
                if not row.bound_to(getattr(caller, "agent", "")):
                    raise _not_in_scope(f"secret {name!r} is not bound to agent {getattr(caller, 'agent', '')!r}")
                if definition.name not in row.scope:
                    raise _not_in_scope(f"secret {name!r} may not be used by {definition.name}")
                if F.discloses(definition.name) and not row.disclosed:
                    raise _not_in_scope(f"secret {name!r} is not disclosed to agents, and {definition.name} would "
                                        "hand its value to code the agent controls (the owner re-sets it with "
                                        "--disclose-to-agent to allow that)")
                if row.hosts and p.target is None and definition.name not in (refs.HTTP, refs.PROC):
                    raise _not_in_scope(f"secret {name!r} is bound to hosts, and this call names no base_url")
                if p.target is not None and not F.host_allowed(row.hosts, p.target.scheme, p.target.host,
                                                               p.target.port):
                    raise _not_in_scope(f"secret {name!r} may not be sent to {p.target.scheme}://"
                                        f"{p.target.host}:{p.target.port}")
                rows[name] = row
            values: dict[str, str] = {}
            scrub_only: dict[str, str] = {}
            signing_key: bytearray | None = None
            try:
                for name, row in rows.items():
                    pt = self._decrypt(key, row)
                    try:
                        if p.sign and name == p.sign["secret"]:
                            signing_key = bytearray(pt)
                        if name in p.text:
                            values[name] = _usable(name, pt, definition.name)
                        elif (s := _maybe_text(pt)) is not None:
                            scrub_only[name] = s
                    finally:
                        keys.wipe(pt)
                signature = None
                if p.sign is not None:
                    assert p.target is not None and signing_key is not None
                    signature = (p.sign["header"], refs.hmac_sha256(
                        signing_key, refs.sign_message(p.sign, p.target, args), p.sign["encoding"]))
            finally:
                if signing_key is not None:
                    keys.wipe(signing_key)
            out = refs.substitute(definition.name, args, values, signature)
            now = int(time.time())
            for name in rows:
                self._used[name] = now
        if time.monotonic() - self._last_touch > TOUCH_EVERY:
            self.flush_used()
        # Each value and its encodings, carrying the secret's name: results, errors and the audit
        # log show `${secret:NAME}` where the value would have been.
        scrub: list[str] = []
        for name, v in [*values.items(), *scrub_only.items()]:
            scrub.extend(SecretValue(e, name) for e in refs.encodings(v))
        return out, scrub

    def values_for(self, agent: str, scope: str, names: list[str]) -> dict[str, str]:
        """Secret values given to a component at its start, never to the agent (an upstream MCP
        server's environment: scope `upstream.<server>`). Each secret must be bound to `agent`
        and have `scope` in its scopes, as for a call."""
        out: dict[str, str] = {}
        with self._lock:
            key = self.key()
            for name in sorted(set(names)):
                row = self.file.row(name)
                if row is None:
                    raise err("SecretNotFound", f"no secret named {name!r} in the vault")
                if not row.bound_to(agent) or scope not in row.scope:
                    raise _not_in_scope(f"secret {name!r} may not be given to {scope} for agent {agent!r}")
                pt = self._decrypt(key, row)
                try:
                    out[name] = _usable(name, pt, scope)
                finally:
                    keys.wipe(pt)
                self._used[name] = int(time.time())
        return out

    def _decrypt(self, key: keys.KeyBuffer, row: Row) -> bytearray:
        try:
            return self.file.decrypt(key, row)
        except StockadeError:
            if not self.file.key_matches(key):
                # vault.db was rekeyed or replaced by another process: our key is stale.
                raise err("VaultSealed", "the vault changed on disk; it must be unsealed again",
                          _SEALED_RECOVERY) from None
            raise err("VaultCorrupt", f"secret {row.name!r} is damaged and cannot be used") from None


def _maybe_text(pt: bytearray) -> str | None:
    try:
        return bytes(pt).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _usable(name: str, pt: bytearray, capability: str) -> str:
    """Secret values reach headers and env as text: they must be UTF-8 without NUL (and CR/LF in headers)."""
    try:
        s = bytes(pt).decode("utf-8")
    except UnicodeDecodeError:
        raise err("InvalidInput", f"secret {name!r} is not UTF-8 text and cannot be used by {capability}") from None
    if "\0" in s or (capability == refs.HTTP and ("\r" in s or "\n" in s)):
        raise err("InvalidInput", f"secret {name!r} contains characters not allowed in a "
                  f"{'header' if capability == refs.HTTP else 'value'} (NUL, CR or LF)")
    return s


async def in_thread(fn: Any, *a: Any) -> Any:
    """Argon2 takes ~0.1-0.5 s: keep the event loop free."""
    return await asyncio.to_thread(fn, *a)
