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
from stockade.core.admin import AdminCommand
from stockade.core.errors import StockadeError, err
from stockade.core.home import Home
from stockade.core.wiring import Gateway
from stockade.vault import keys
from stockade.vault.runtime import Vault, in_thread
from stockade.vault.store import LEGACY_WARNING, VaultFile

CAPS_FILE = Path(__file__).with_name("capabilities.yaml")


def vault(gw: Gateway) -> Vault:
    v = gw.vault
    if v is None:
        raise err("Internal", "the vault is not running")
    return v


def _health(gw: Gateway) -> None:
    gw.pipeline.health["vault"] = vault(gw).health()


async def start(gw: Gateway) -> None:
    v = Vault(gw.home.vault_path)
    v.hardening = keys.harden_process()
    gw.vault = v
    gw.pipeline.secrets = v
    _register_capabilities(gw, v)
    _health(gw)


async def stop(gw: Gateway) -> None:
    v = gw.vault
    if v is not None:
        v.seal()
        v.file.close()


# -- agent capabilities ------------------------------------------------------------------------
def _register_capabilities(gw: Gateway, v: Vault) -> None:
    reg = gw.pipeline.registry
    defs = [d for d in parse_definitions(CAPS_FILE.read_text(encoding="utf-8"), str(CAPS_FILE))
            if d.name not in reg]
    impls = {"secrets.list": lambda ctx, args: _secrets_list(v, ctx.caller.agent),
             "secrets.request": lambda ctx, args: _secrets_request(v, args)}
    if defs:
        reg.add(defs, {d.name: impls[d.name] for d in defs})


def _secrets_list(v: Vault, agent: str | None) -> dict[str, Any]:
    """The agent's view: only secrets bound to it (`agent`); the owner's (`None`): all, with agents."""
    v.flush_used()
    rows = v.file.rows() if v.file.exists() else []
    if agent is None:
        return {"sealed": v.sealed, "secrets": [r.public() for r in rows]}
    return {"sealed": v.sealed, "secrets": [{"name": r.name, "scope": r.scope, "hosts": r.hosts,
                                             "disclosed": r.disclosed, "last_used": r.last_used}
                                            for r in rows if r.bound_to(agent)]}


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


async def _status(gw: Gateway, args: dict[str, Any]) -> Any:
    return vault(gw).status()


async def _unseal(gw: Gateway, args: dict[str, Any]) -> Any:
    v = vault(gw)
    pw = _pass(args, "passphrase")
    try:
        # All or nothing, audited either way (a damaged page used to unseal and then fail).
        await v.unseal_audited(pw, gw.pipeline.record_event)
    finally:
        keys.wipe(pw)
        _health(gw)
    gw.bus.publish("vault.unsealed", {})
    out = v.status()
    legacy = [r.name for r in v.file.rows() if r.agents is None]
    if legacy:
        out["warnings"] = [f"secret {n!r}: {LEGACY_WARNING}" for n in legacy]
    return out


async def _seal(gw: Gateway, args: dict[str, Any]) -> Any:
    v = vault(gw)
    was = v.seal()
    _health(gw)
    if was:
        await gw.pipeline.record_event("vault.sealed")
        gw.bus.publish("vault.sealed", {})
    return {"sealed": True, "was_unsealed": was}


async def _list(gw: Gateway, args: dict[str, Any]) -> Any:
    return _secrets_list(vault(gw), None)


async def _set(gw: Gateway, args: dict[str, Any]) -> Any:
    v = vault(gw)
    try:
        value = bytearray(base64.b64decode(args.get("value_b64") or "", validate=True))
    except (binascii.Error, TypeError, ValueError):
        raise err("InvalidInput", "value_b64 must be base64") from None
    rotate = bool(args.get("rotate"))
    try:
        row = v.put(args.get("name"), value, args.get("scope"), args.get("hosts"),  # type: ignore[arg-type]
                    agents=args.get("agents"), all_agents=args.get("all_agents") is True,
                    disclose_to_agent=args.get("disclose_to_agent") is True, keep_scope=rotate, must_exist=rotate)
    finally:
        keys.wipe(value)
    await gw.pipeline.record_event("vault.secret_rotated" if rotate else "vault.secret_set",
                                   name=row.name, scope=row.scope, hosts=row.hosts, agents=row.public()["agents"],
                                   disclosed=row.disclosed)
    return row.public()


async def _remove(gw: Gateway, args: dict[str, Any]) -> Any:
    name = args.get("name")
    if not isinstance(name, str):
        raise err("InvalidInput", "name must be a string")
    v = vault(gw)
    if not v.file.remove(name):
        raise err("SecretNotFound", f"no secret named {name!r}")
    await gw.pipeline.record_event("vault.secret_removed", name=name)
    return {"name": name, "removed": True}


async def _rekey(gw: Gateway, args: dict[str, Any]) -> Any:
    v = vault(gw)
    old, new = _pass(args, "passphrase"), _pass(args, "new_passphrase")
    try:
        n = await in_thread(v.rekey, old, new)
    finally:
        keys.wipe(old)
        keys.wipe(new)
    await gw.pipeline.record_event("vault.rekeyed", secrets=n)
    return {"rekeyed": True, "secrets": n, "sealed": v.sealed}


ADMIN_COMMANDS = {
    "vault.status": AdminCommand(_status),
    "vault.unseal": AdminCommand(_unseal),
    "vault.seal": AdminCommand(_seal),
    "vault.list": AdminCommand(_list),
    "vault.set": AdminCommand(_set),
    "vault.remove": AdminCommand(_remove),
    "vault.rekey": AdminCommand(_rekey),
}


# -- doctor ----------------------------------------------------------------------------------------
def doctor(home: Home) -> dict[str, dict[str, Any]]:
    """vault.db present, 0600, readable meta with intact checksum, rows well-formed. No passphrase."""
    path = home.vault_path
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
