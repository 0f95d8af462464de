"""Issue 23 item 3: with one damaged vault.db page, unseal is all or nothing, and audited either way.

A real damaged page: the root page of the `secrets` table is overwritten on disk (the meta rows,
which the passphrase check reads, stay intact), exactly what a bad sector does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from stockade.core.errors import StockadeError
from stockade.vault import keys
from stockade.vault.runtime import Vault
from stockade.vault.store import VaultFile

PASS = b"unseal damage passphrase"


def make_vault(path: Path) -> None:
    f = VaultFile(path)
    kb = keys.KeyBuffer()
    f.init(bytearray(PASS), kb)
    for i in range(3):
        f.put(kb, f"s{i}", f"value-{i}".encode(), ["network.http_request"], ["api.example.com"],
              agents=["alice"])
    kb.close()
    f.close()


def damage_secrets_page(path: Path) -> None:
    c = sqlite3.connect(path)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = c.execute("PRAGMA page_size").fetchone()[0]
    root = c.execute("SELECT rootpage FROM sqlite_master WHERE name='secrets'").fetchone()[0]
    meta_root = c.execute("SELECT rootpage FROM sqlite_master WHERE name='vault_meta'").fetchone()[0]
    c.close()
    assert root not in (1, meta_root)
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * 64)         # the b-tree page header and cell pointers: garbage


def test_damaged_page_unseal_refuses_and_stays_sealed(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    make_vault(path)
    damage_secrets_page(path)
    v = Vault(path)
    events: list[tuple[str, dict[str, Any]]] = []

    async def record(kind: str, **data: Any) -> None:
        events.append((kind, data))

    with pytest.raises(StockadeError) as e:
        asyncio.run(v.unseal_audited(bytearray(PASS), record))
    assert e.value.type == "VaultCorrupt"
    assert v.sealed                                   # nothing half-done: no key kept
    assert [k for k, _ in events] == ["vault.unseal_failed"] and events[0][1]["error"] == "VaultCorrupt"
    with pytest.raises(StockadeError) as e2:
        v.key()
    assert e2.value.type == "VaultSealed"


def test_intact_unseal_is_audited_before_the_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    make_vault(path)
    v = Vault(path)
    seen: list[bool] = []

    async def record(kind: str, **data: Any) -> None:
        seen.append(v.sealed)                         # still sealed while the record is written
        assert kind == "vault.unsealed" and data["secrets"] == 3

    asyncio.run(v.unseal_audited(bytearray(PASS), record))
    assert seen == [True] and not v.sealed
    v.seal()


def test_unseal_whose_audit_fails_stays_sealed(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    make_vault(path)
    v = Vault(path)

    async def record(kind: str, **data: Any) -> None:
        from stockade.core.errors import err
        if kind == "vault.unsealed":
            raise err("Internal", "disk full")

    with pytest.raises(StockadeError):
        asyncio.run(v.unseal_audited(bytearray(PASS), record))
    assert v.sealed


def test_wrong_passphrase_is_audited(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    make_vault(path)
    v = Vault(path)
    kinds: list[str] = []

    async def record(kind: str, **data: Any) -> None:
        kinds.append(kind)

    with pytest.raises(StockadeError) as e:
        asyncio.run(v.unseal_audited(bytearray(b"wrong passphrase!!"), record))
    assert e.value.type == "WrongPassphrase" and kinds == ["vault.unseal_failed"] and v.sealed
