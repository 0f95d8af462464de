"""An in-process gateway for the approvals tests: the real Pipeline, the real ApprovalService on
the real SQLite store, the real Vault, and echo capabilities carrying the real names
(`process.run`, `network.http_request`) so the vault's scope rules apply exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from stockade.approvals.service import ApprovalService
from stockade.capabilities.registry import Registry, parse_definitions
from stockade.core import agents
from stockade.core.errors import StockadeError
from stockade.core.home import Home
from stockade.core.types import Decision
from stockade.gateway.pipeline import MemoryAudit, Pipeline
from stockade.vault import keys
from stockade.vault.runtime import Vault
from stockade.vault.store import VaultFile

PASS = b"approvals test passphrase"
DEFS = """
capabilities:
  - name: process.run
    purpose: test echo
    when_to_use: tests
    secrets: true
    side_effects: true
    input:
      type: object
      properties:
        argv: {type: array, items: {type: string}}
        env: {type: object, additionalProperties: {type: string}}
        fail: {type: boolean}
    output: {type: object}
  - name: network.http_request
    purpose: test echo
    when_to_use: tests
    secrets: true
    side_effects: true
    input:
      type: object
      properties:
        url: {type: string}
        headers: {type: object, additionalProperties: {type: string}}
        fail: {type: boolean}
    output: {type: object}
"""


class Tiers:
    def __init__(self, tiers: dict[str, str]):
        self.tiers = tiers

    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return Decision(self.tiers.get(capability, "autonomous"), rule="test", layer="org")

    peek = decide

    def visible(self, agent: str, capability: str) -> bool:
        return True


class Gw:
    """Everything wired as `serve` wires it, minus transports and sandbox."""

    def __init__(self, tmp_path: Path, *, hold: float = 30.0, tiers: dict[str, str] | None = None):
        self.home = Home.at(tmp_path / "home")
        self.home.ensure_layout()      # only the directories: no other part is needed here
        self.db = self.home.db()
        self.runs: list[dict[str, Any]] = []
        defs = parse_definitions(DEFS, "test-defs.yaml")
        self.registry = Registry(defs, {d.name: self._echo for d in defs})
        self.audit = MemoryAudit()
        self.vault = Vault(self.home.vault_path)
        self.pipeline = Pipeline(self.home, self.registry, self.db, audit=self.audit, secrets=self.vault,
                                 policy=Tiers(tiers if tiers is not None else {"process.run": "approval_required"}))
        self.svc = ApprovalService(self.pipeline, ttl=3600, hold_seconds=hold)
        self.pipeline.approvals = self.svc
        self.keys: dict[str, str] = {}

    def _echo(self, ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        """Hands back everything it got, like a program printing its environment."""
        self.runs.append(args)
        if args.get("fail"):
            from stockade.core.errors import err
            raise err("NetworkError", "echo: " + json.dumps(args))
        return {"got": args, "text": json.dumps(args)}

    def agent(self, name: str) -> Any:
        key = agents.create(self.db, name)
        self.keys[name] = key
        return self.pipeline.authenticate(key, f"s-{name}", "test")

    def init_vault(self) -> keys.KeyBuffer:
        f = VaultFile(self.home.vault_path)
        kb = keys.KeyBuffer()
        f.init(bytearray(PASS), kb)
        f.close()
        return kb

    def records(self) -> list[dict[str, Any]]:
        return self.audit.records

    def blob(self) -> str:
        return json.dumps(self.audit.records, default=str)


async def call(gw: Gw, caller: Any, cap: str, args: dict[str, Any]) -> dict[str, Any] | StockadeError:
    try:
        return await gw.pipeline.invoke(caller, cap, args)
    except StockadeError as e:
        return e


async def until(pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def add_secret(gw: Gw, name: str, value: bytes, scope: list[str], hosts: list[str] | None = None,
               **binding: Any) -> None:
    """Store a secret offline (as `stockade vault set` does on a stopped home)."""
    f = VaultFile(gw.home.vault_path)
    kb = keys.KeyBuffer()
    try:
        f.unlock(bytearray(PASS), kb)
        f.put(kb, name, value, scope, hosts or [], **binding)
    finally:
        kb.close()
        f.close()
