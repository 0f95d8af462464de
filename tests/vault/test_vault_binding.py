"""Issue 13 item 3: secrets are bound to agents, and a scope that hands the value to code the agent
controls (process.run) needs the owner's explicit disclosure. Also the format 1 -> 2 migration.

Real Pipeline, real Vault on a real vault.db, echo capabilities under the real names.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.approvals.helpers import PASS, Gw, add_secret, call

from stockade.core.errors import StockadeError
from stockade.vault import format as F
from stockade.vault import keys
from stockade.vault.store import VaultFile

VALUE = "VAULT-VALUE-5e1f0c2b9a"


def _gw(tmp_path: Path) -> Gw:
    gw = Gw(tmp_path, tiers={})
    gw.init_vault().close()
    return gw


def test_second_agent_cannot_use_another_agents_secret(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    alice, bob = gw.agent("alice"), gw.agent("bob")
    add_secret(gw, "api", VALUE.encode(), ["network.http_request"], ["api.example.com"], agents=["alice"])
    gw.vault.unseal(bytearray(PASS))
    args = {"url": "https://api.example.com/x", "headers": {"Authorization": "Bearer ${secret:api}"}}
    ok = asyncio.run(call(gw, alice, "network.http_request", args))
    bad = asyncio.run(call(gw, bob, "network.http_request", args))
    assert isinstance(ok, dict), ok
    assert isinstance(bad, StockadeError) and bad.type == "SecretNotInScope" and "bob" in bad.message
    assert len(gw.runs) == 1                                   # bob's call never reached the capability
    assert gw.records()[-1]["outcome"] == {"status": "error", "error": "SecretNotInScope"}
    gw.vault.seal()


def test_secret_needs_agents_or_all_agents(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    with pytest.raises(StockadeError) as e:
        add_secret(gw, "api", b"v", ["network.http_request"], ["api.example.com"])
    assert e.value.type == "InvalidInput" and "--all-agents" in e.value.message
    add_secret(gw, "api", b"v", ["network.http_request"], ["api.example.com"], all_agents=True)
    assert VaultFile(gw.home.vault_path).row("api").agents == ["*"]          # type: ignore[union-attr]


def test_process_run_scope_is_refused_without_disclosure(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    with pytest.raises(StockadeError) as e:
        add_secret(gw, "deploy", b"v", ["process.run"], agents=["alice"])
    assert e.value.type == "InvalidInput" and "will be able to read the value" in e.value.message
    assert VaultFile(gw.home.vault_path).row("deploy") is None
    add_secret(gw, "deploy", b"v", ["process.run"], agents=["alice"], disclose_to_agent=True)
    pub = VaultFile(gw.home.vault_path).row("deploy").public()               # type: ignore[union-attr]
    assert pub["disclosed"] is True and pub["agents"] == ["alice"]
    # use-not-read scopes are never marked disclosed
    add_secret(gw, "api", b"v", ["network.http_request"], ["a.example"], agents=["alice"], disclose_to_agent=True)
    assert VaultFile(gw.home.vault_path).row("api").public()["disclosed"] is False  # type: ignore[union-attr]


def test_disclosure_and_agents_are_authenticated_data(tmp_path: Path) -> None:
    """Re-binding a row to another agent (or marking it disclosed) in the file breaks its tag."""
    gw = _gw(tmp_path)
    bob = gw.agent("bob")
    gw.agent("alice")
    add_secret(gw, "api", VALUE.encode(), ["network.http_request"], ["api.example.com"], agents=["alice"])
    c = sqlite3.connect(gw.home.vault_path)
    c.execute("UPDATE secrets SET agents=? WHERE name='api'", (json.dumps(["bob"]),))
    c.commit()
    c.close()
    gw.vault.file.close()
    v = gw.vault
    with pytest.raises(StockadeError) as e:
        v.unseal(bytearray(PASS))                              # unseal verifies every secret
    assert e.value.type == "VaultCorrupt" and v.sealed
    r = asyncio.run(call(gw, bob, "network.http_request",
                         {"url": "https://api.example.com/", "headers": {"A": "${secret:api}"}}))
    assert isinstance(r, StockadeError) and r.type == "VaultSealed"


def test_vault_value_never_appears_anywhere(tmp_path: Path) -> None:
    gw = _gw(tmp_path)
    alice = gw.agent("alice")
    add_secret(gw, "deploy", VALUE.encode(), ["process.run"], agents=["alice"], disclose_to_agent=True)
    gw.vault.unseal(bytearray(PASS))
    events: list[Any] = []

    async def main() -> list[Any]:
        sub = gw.pipeline.bus.subscribe(maxsize=1000)
        ok = await call(gw, alice, "process.run", {"argv": ["env"], "env": {"TOKEN": "${secret:deploy}",
                                                                            "PLAIN_TOKEN": "agent-text"}})
        bad = await call(gw, alice, "process.run", {"argv": ["env"], "env": {"TOKEN": "${secret:deploy}"},
                                                    "fail": True})
        while (ev := await sub.get(timeout=0)) is not None:
            events.append(ev)
        return [ok, bad]

    ok, bad = asyncio.run(main())
    assert gw.runs[0]["env"]["TOKEN"] == VALUE                   # the command did get the value
    assert isinstance(ok, dict) and ok["got"]["env"]["TOKEN"] == "${secret:deploy}"
    assert ok["got"]["env"]["PLAIN_TOKEN"] == "agent-text"       # the agent's own text is untouched
    assert isinstance(bad, StockadeError) and "${secret:deploy}" in bad.message
    seen = json.dumps([ok, bad.to_dict(), gw.audit.records, [e.to_dict() for e in events]], default=str)
    assert VALUE not in seen and "[REDACTED]" not in seen
    assert "${secret:deploy}" in json.dumps(gw.audit.records)
    gw.vault.seal()


def _make_format1(path: Path, kb: keys.KeyBuffer) -> None:
    """A vault.db as format 1 wrote it: no agents/disclosed columns, format 1 associated data."""
    f = VaultFile(path)
    f.init(bytearray(PASS), kb)
    f.close()
    c = sqlite3.connect(path)
    c.execute("ALTER TABLE secrets DROP COLUMN agents")
    c.execute("ALTER TABLE secrets DROP COLUMN disclosed")
    c.execute("UPDATE vault_meta SET value='1' WHERE key='format'")
    for name, scope, hosts in (("api", ["network.http_request"], ["api.example.com"]), ("envtok", ["process.run"], [])):
        nonce, ct = keys.seal(kb, (name + "-" + VALUE).encode(), F.aad(name, scope, hosts))
        c.execute("INSERT INTO secrets(name, scope, hosts, nonce, ciphertext, created, updated) VALUES (?,?,?,?,?,1,1)",
                  (name, json.dumps(scope), json.dumps(hosts), nonce, ct))
    c.commit()
    c.close()


def test_format1_vault_migrates_to_all_agents_with_a_warning(tmp_path: Path) -> None:
    gw = Gw(tmp_path, tiers={})
    alice, bob = gw.agent("alice"), gw.agent("bob")
    kb = keys.KeyBuffer()
    _make_format1(gw.home.vault_path, kb)
    kb.close()
    rows = {r.name: r.public() for r in VaultFile(gw.home.vault_path).rows()}     # opening migrates
    assert rows["api"]["agents"] == ["*"] and "bound to agents" in rows["api"]["warning"]
    c = sqlite3.connect(gw.home.vault_path)
    assert c.execute("SELECT value FROM vault_meta WHERE key='format'").fetchone()[0] == "2"
    c.close()
    gw.vault.unseal(bytearray(PASS))
    args = {"url": "https://api.example.com/", "headers": {"A": "${secret:api}"}}
    for who in (alice, bob):                                   # every agent, as before the migration
        assert isinstance(asyncio.run(call(gw, who, "network.http_request", args)), dict)
    # process.run was never disclosed by the owner: refused until re-set with the flag
    r = asyncio.run(call(gw, alice, "process.run", {"argv": ["env"], "env": {"K": "${secret:envtok}"}}))
    assert isinstance(r, StockadeError) and r.type == "SecretNotInScope" and "--disclose-to-agent" in r.message
    # re-binding rewrites the row as format 2
    gw.vault.put("api", b"new", ["network.http_request"], ["api.example.com"], agents=["alice"])
    assert gw.vault.file.row("api").agents == ["alice"]                      # type: ignore[union-attr]
    assert isinstance(asyncio.run(call(gw, bob, "network.http_request", args)), StockadeError)
    gw.vault.seal()
