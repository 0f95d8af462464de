"""Wire the vault into `stockade serve`: the SecretsHook, admin commands, health, doctor.

The gateway starts sealed. `start` runs after every `prefork` hook (the sandbox zygote is forked
before the loop and before any unseal, so no sandbox child can inherit the key), makes the
process non-dumpable with core dumps off, and plugs `Vault.resolve` into the pipeline.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Any

from stockade.capabilities.registry import parse_definitions
from stockade.core.errors import StockadeError, err
from stockade.supervision.admin import admin_command
from stockade.vault import keys
from stockade.vault.runtime import Vault, in_thread
from stockade.vault.store import VaultFile

CAPS_FILE = Path(__file__).with_name("capabilities.yaml")


def vault(gw: Any) -> Vault:
    v = gw.state.get("vault")
    if v is None:
        raise err("Internal", "the vault is not running")
    return v


def _health(gw: Any) -> None:
    gw.pipeline.health["vault"] = vault(gw).health()


async def start(gw: Any) -> None:
    v = Vault(gw.home.vault_path)
    v.hardening = keys.harden_process()
    gw.state["vault"] = v
    gw.pipeline.secrets = v
    _register_capabilities(gw, v)
    _health(gw)


async def stop(gw: Any) -> None:
    v = gw.state.get("vault")
    if v is not None:
        v.seal()
        v.file.close()


# -- agent capabilities ------------------------------------------------------------------------
def _register_capabilities(gw: Any, v: Vault) -> None:
    reg = gw.pipeline.registry
    defs = [d for d in parse_definitions(CAPS_FILE.read_text(encoding="utf-8"), str(CAPS_FILE))
            if d.name not in reg]
    impls = {"secrets.list": lambda ctx, args: _secrets_list(v),
             "secrets.request": lambda ctx, args: _secrets_request(v, args)}
    if defs:
        reg.add(defs, {d.name: impls[d.name] for d in defs})


def _secrets_list(v: Vault) -> dict[str, Any]:
    v.flush_used()
    rows = v.file.rows() if v.file.exists() else []
    return {"sealed": v.sealed, "secrets": [{"name": r.name, "scope": r.scope, "hosts": r.hosts,
                                             "last_used": r.last_used} for r in rows]}


def _secrets_request(v: Vault, args: dict[str, Any]) -> dict[str, Any]:
    # Reached only once the owner approved the request (default tier approval_required).
    present = v.file.exists() and v.file.row(args["name"]) is not None
    return {"name": args["name"], "status": "approved: the owner was asked to add it", "present": present}


# -- admin commands (owner's CLI over run/admin.sock) -------------------------------------------
def _pass(args: dict[str, Any], key: str) -> bytearray:
    p = args.get(key)
    if not isinstance(p, str) or not p:
        raise err("InvalidInput", f"{key} must be a non-empty string")
    return bytearray(p.encode("utf-8"))


@admin_command("vault.status")
async def _status(gw: Any, args: dict[str, Any]) -> Any:
    return vault(gw).status()


@admin_command("vault.unseal")
async def _unseal(gw: Any, args: dict[str, Any]) -> Any:
    v = vault(gw)
    pw = _pass(args, "passphrase")
    try:
        await in_thread(v.unseal, pw)
    except StockadeError as e:
        await gw.pipeline.record_event("vault.unseal_failed", error=e.type)
        raise
    finally:
        keys.wipe(pw)
    _health(gw)
    await gw.pipeline.record_event("vault.unsealed", secrets=len(v.file.rows()))
    gw.bus.publish("vault.unsealed", {})
    return v.status()


@admin_command("vault.seal")
async def _seal(gw: Any, args: dict[str, Any]) -> Any:
    v = vault(gw)
    was = v.seal()
    _health(gw)
    if was:
        await gw.pipeline.record_event("vault.sealed")
        gw.bus.publish("vault.sealed", {})
    return {"sealed": True, "was_unsealed": was}


@admin_command("vault.list")
async def _list(gw: Any, args: dict[str, Any]) -> Any:
    return _secrets_list(vault(gw))


@admin_command("vault.set")
async def _set(gw: Any, args: dict[str, Any]) -> Any:
    v = vault(gw)
    try:
        value = bytearray(base64.b64decode(args.get("value_b64") or "", validate=True))
    except (binascii.Error, TypeError, ValueError):
        raise err("InvalidInput", "value_b64 must be base64") from None
    rotate = bool(args.get("rotate"))
    try:
        row = v.put(args.get("name"), value, args.get("scope"), args.get("hosts"),  # type: ignore[arg-type]
                    keep_scope=rotate, must_exist=rotate)
    finally:
        keys.wipe(value)
    await gw.pipeline.record_event("vault.secret_rotated" if rotate else "vault.secret_set",
                                   name=row.name, scope=row.scope, hosts=row.hosts)
    return row.public()


@admin_command("vault.remove")
async def _remove(gw: Any, args: dict[str, Any]) -> Any:
    name = args.get("name")
    if not isinstance(name, str):
        raise err("InvalidInput", "name must be a string")
    v = vault(gw)
    if not v.file.remove(name):
        raise err("SecretNotFound", f"no secret named {name!r}")
    await gw.pipeline.record_event("vault.secret_removed", name=name)
    return {"name": name, "removed": True}


@admin_command("vault.rekey")
async def _rekey(gw: Any, args: dict[str, Any]) -> Any:
    v = vault(gw)
    old, new = _pass(args, "passphrase"), _pass(args, "new_passphrase")
    try:
        n = await in_thread(v.rekey, old, new)
    finally:
        keys.wipe(old)
        keys.wipe(new)
    await gw.pipeline.record_event("vault.rekeyed", secrets=n)
    return {"rekeyed": True, "secrets": n, "sealed": v.sealed}


# -- doctor ----------------------------------------------------------------------------------------
def doctor(home: Any) -> dict[str, dict[str, Any]]:
    """vault.db present, 0600, readable meta with intact checksum, rows well-formed. No passphrase."""
    path = Path(home.vault_path)
    if not path.exists():
        return {"vault": {"status": "ok", "initialized": False,
                          "detail": "no vault yet (stockade vault init)"}}
    out: dict[str, Any] = {"status": "ok", "initialized": True}
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        out.update(status="critical", detail=f"vault.db is mode {mode:o}; must be 0600")
        return {"vault": out}
    f = VaultFile(path)
    try:
        kdf, _n, _c = f.check_meta()
        out["kdf"] = {"m_kib": kdf.m_kib, "t": kdf.t, "p": kdf.p, "salt_bytes": len(kdf.salt)}
        out["secrets"] = len(f.rows())
        if (kdf.m_kib, kdf.t, kdf.p) != (65536, 3, 4):
            out.update(status="degraded", detail="KDF parameters differ from the RFC 9106 low-memory profile")
    except StockadeError as e:
        out.update(status="critical", detail=e.message)
    finally:
        f.close()
    return {"vault": out}
