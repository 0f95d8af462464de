"""Shared fixtures for the supervision tests: an in-process pipeline with approvals wired in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stockade.approvals.service import ApprovalService
from stockade.capabilities.registry import DEFINITIONS_DIR, Registry, module_implementations, parse_definitions
from stockade.core import agents
from stockade.core.home import Home
from stockade.gateway.pipeline import Caller, Decision, MemoryAudit, Pipeline
from stockade.gateway.service import init_home

ECHO_YAML = """
capabilities:
  - name: test.echo
    purpose: Echo the arguments back (test only).
    when_to_use: Tests.
    side_effects: true
    input:
      type: object
      additionalProperties: false
      properties:
        text: {type: string}
        n: {type: integer}
    output: {type: object}
"""


class TierPolicy:
    """A fixed tier per capability: the policy part is tested elsewhere; here it only routes."""

    def __init__(self, tiers: dict[str, str]):
        self.tiers = tiers

    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return Decision(self.tiers.get(capability, "autonomous"), rule="test", layer="org")

    peek = decide

    def visible(self, agent: str, capability: str) -> bool:
        return self.tiers.get(capability) != "blocked"


class Clock:
    def __init__(self) -> None:
        import time

        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def make_registry(runs: list[dict[str, Any]]) -> Registry:
    # Only the built-in system/agent capabilities plus a test one: independent of other parts.
    import stockade.capabilities.impl.approvals
    import stockade.capabilities.impl.system

    defs = []
    for f in ("system.yaml", "approvals.yaml"):
        defs += parse_definitions((DEFINITIONS_DIR / f).read_text(), f)
    defs += parse_definitions(ECHO_YAML, "test.yaml")

    def echo(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        runs.append(dict(args))
        return {"echo": args, "run": len(runs)}

    known = {**module_implementations(stockade.capabilities.impl.approvals),
             **module_implementations(stockade.capabilities.impl.system)}
    impls = {d.name: known[d.name] for d in defs if d.name in known}
    impls["test.echo"] = echo
    return Registry(defs, impls)


class Env:
    def __init__(self, tmp_path: Any, hold: float = 2.0, ttl: float = 3600.0):
        self.home = Home.at(tmp_path / "home")
        init_home(self.home)
        self.db = self.home.db()
        self.key = agents.create(self.db, "alice")
        self.runs: list[dict[str, Any]] = []
        self.policy = TierPolicy({"test.echo": "approval_required", "system.time": "approval_required"})
        self.audit = MemoryAudit()
        self.pipeline = Pipeline(self.home, make_registry(self.runs), self.db, policy=self.policy, audit=self.audit)
        self.clock = Clock()
        self.svc = ApprovalService(self.pipeline, ttl=ttl, hold_seconds=hold, clock=self.clock)
        self.pipeline.approvals = self.svc
        self.caller = self.pipeline.authenticate(self.key, "s1", "test")

    def other_caller(self, name: str) -> Caller:
        key = agents.create(self.db, name)
        return self.pipeline.authenticate(key, "s2", "test")

    def kinds(self) -> list[str]:
        return [r.get("kind") or f"call:{r['capability']}:{r['phase']}:{r['outcome']['status']}"
                for r in self.audit.records]


@pytest.fixture
def env(tmp_path: Any) -> Env:
    return Env(tmp_path)


async def until(pred: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)
