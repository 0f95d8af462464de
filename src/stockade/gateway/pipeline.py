"""The invoke pipeline: the one path from any transport to a capability.

    authenticate -> look up -> validate -> policy -> approvals -> secrets -> execute
                 -> shape result -> redact -> audit (durable) -> return

Every transport (JSON-RPC, MCP Streamable HTTP, MCP WebSocket, the stdio bridge via HTTP, the
dashboard) calls `Pipeline.invoke`. Parts plug in through the small hook objects below; each
default is the conservative behaviour of a part that is not configured.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from stockade.audit.redact import redact
from stockade.capabilities.registry import Definition, Registry
from stockade.core import agents
from stockade.core.errors import StockadeError, err
from stockade.core.events import EventBus
from stockade.core.home import Home
from stockade.core.types import (  # noqa: F401  (re-exported for the transports)
    TIER_ORDER,
    Caller,
    Decision,
    ProgressFn,
    progress_reporter,
    report_progress,
)


@dataclass
class CallContext:
    """What an in-process implementation gets."""

    caller: Caller
    definition: Definition
    pipeline: Pipeline
    call_id: str


# -- hooks ---------------------------------------------------------------------------------
class PolicyHook(Protocol):
    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision: ...  # counts rate limits
    def peek(self, agent: str, capability: str, args: dict[str, Any]) -> Decision: ...    # counts nothing
    def visible(self, agent: str, capability: str) -> bool: ...


class AuditHook(Protocol):
    async def record(self, rec: dict[str, Any]) -> None: ...   # returns once durable


class ApprovalHook(Protocol):
    async def request(self, caller: Caller, definition: Definition, args: dict[str, Any],
                      decision: Decision, call_id: str) -> None: ...  # returns = approved


class SecretsHook(Protocol):
    def resolve(self, caller: Caller, definition: Definition,
                args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]: ...


class ExecutorHook(Protocol):
    async def run(self, caller: Caller, definition: Definition, args: dict[str, Any],
                  call_id: str) -> dict[str, Any]: ...


class NoPolicy:
    """Used only where no policy engine is wired (unit tests of the transports)."""

    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return Decision("autonomous", layer="default")

    def peek(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return Decision("autonomous", layer="default")

    def visible(self, agent: str, capability: str) -> bool:
        return True


class NoApprovals:
    async def request(self, caller: Caller, definition: Definition, args: dict[str, Any],
                      decision: Decision, call_id: str) -> None:
        raise err("ApprovalPending", f"{definition.name} needs the owner's approval", approval=None)


class NoSecrets:
    def resolve(self, caller: Caller, definition: Definition,
                args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        return args, []


class NoSandbox:
    async def run(self, caller: Caller, definition: Definition, args: dict[str, Any],
                  call_id: str) -> dict[str, Any]:
        raise err("SandboxUnavailable", f"{definition.name} must run in the sandbox, which is not available")


class MemoryAudit:
    """Keeps records in memory; for transport unit tests only (never used by `serve`)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def record(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)


# -- the pipeline ----------------------------------------------------------------------------
class Pipeline:
    def __init__(self, home: Home, registry: Registry, db: sqlite3.Connection, *,
                 policy: PolicyHook | None = None, audit: AuditHook | None = None,
                 approvals: ApprovalHook | None = None, secrets: SecretsHook | None = None,
                 sandbox: ExecutorHook | None = None, bus: EventBus | None = None):
        self.home = home
        self.registry = registry
        self.db = db
        self.policy: PolicyHook = policy or NoPolicy()
        self.audit: AuditHook = audit or MemoryAudit()
        self.approvals: ApprovalHook = approvals or NoApprovals()
        self.secrets: SecretsHook = secrets or NoSecrets()
        self.sandbox: ExecutorHook = sandbox or NoSandbox()
        self.bus = bus or EventBus()
        self.started = time.time()
        self.health: dict[str, Any] = {}   # parts report layer status here (system.health, doctor)

    # -- authentication ---------------------------------------------------------------------
    def authenticate(self, key: str | None, session: str, transport: str) -> Caller:
        agent = agents.authenticate(self.db, key)
        return Caller(agent.name, agents.key_hash(key or ""), session, transport)

    def _recheck(self, caller: Caller) -> None:
        r = self.db.execute("SELECT revoked_at FROM agents WHERE name=? AND key_hash=?",
                            (caller.agent, caller.key_hash)).fetchone()
        if r is None or r[0] is not None:
            raise err("Unauthenticated", "missing, unknown or revoked agent key")

    # -- discovery -----------------------------------------------------------------------------
    def visible(self, caller: Caller) -> list[Definition]:
        """Capabilities this agent may see (blocked ones are hidden)."""
        self._recheck(caller)
        return [d for d in self.registry.all() if self.policy.visible(caller.agent, d.name)]

    def describe(self, caller: Caller, name: str) -> Definition:
        self._recheck(caller)
        if name not in self.registry:
            raise err("CapabilityNotFound", f"no capability named {name!r}")
        if not self.policy.visible(caller.agent, name):
            # Hidden from listings, but a caller who names it learns why it cannot have it.
            raise err("PolicyDenied", f"{name} is blocked by policy for this agent")
        return self.registry.get(name)

    # -- invoke --------------------------------------------------------------------------------
    async def invoke(self, caller: Caller, capability: str, args: Any) -> dict[str, Any]:
        """Run one call through every step. Raises StockadeError; returns the shaped result."""
        t0 = time.perf_counter_ns()
        call_id = uuid.uuid4().hex
        self._recheck(caller)
        base: dict[str, Any] = {"agent": caller.agent, "session": caller.session, "capability": capability,
                                "call": call_id}
        if not isinstance(args, dict):
            raise err("InvalidInput", "arguments must be a JSON object")
        if capability not in self.registry:
            e = err("CapabilityNotFound", f"no capability named {capability!r}")
            await self._record(base, redact(args), None, e, t0, "complete")
            raise e
        definition = self.registry.get(capability)
        errors = sorted(definition.validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(arguments)"
            e = err("InvalidInput", f"{where}: {first.message}"[:500],
                    errors=[f"{'/'.join(str(p) for p in x.absolute_path) or '(arguments)'}: {x.message}"[:200]
                            for x in errors[:10]])
            await self._record(base, redact(args), None, e, t0, "complete")
            raise e

        try:
            decision = self.policy.decide(caller.agent, capability, args)
        except StockadeError as e:
            await self._record(base, redact(args), None, e, t0, "complete")
            raise
        except Exception:
            # Evaluation errors fail closed.
            decision = Decision("blocked", rule="evaluation-error", layer="system",
                                reason="the policy could not be evaluated")
        if definition.pack and TIER_ORDER[definition.default_tier] > TIER_ORDER.get(decision.tier, 3):
            # A pack's declared tier is a floor: the owner's policy may tighten it, never loosen it.
            decision = Decision(definition.default_tier, rule=f"pack:{definition.pack}", layer="pack",
                                reason=f"{definition.pack} asks for {definition.default_tier}", layers=decision.layers)
        safe_args = redact(args)
        event = {"agent": caller.agent, "capability": capability, "args": safe_args,
                 "tier": decision.tier, "rule": decision.rule, "call": call_id}

        if decision.tier == "blocked":
            if decision.retry_after is not None:
                e = err("RateLimited", f"rate limit exceeded for {capability}",
                        retry_after=round(decision.retry_after, 3), rule=decision.rule)
                self.bus.publish("call.rate_limited", event, "warning")
            else:
                e = err("PolicyDenied", decision.reason or f"{capability} is blocked by policy",
                        rule=decision.rule, layer=decision.layer)
                self.bus.publish("call.denied", event, "warning")
            await self._record(base, safe_args, decision, e, t0, "complete")
            raise e
        approved = False   # approved calls report their outcome back (stored for the agent)
        if decision.tier == "approval_required":
            try:
                await self.approvals.request(caller, definition, args, decision, call_id)
            except StockadeError as e:
                await self._record(base, safe_args, decision, e, t0, "complete")
                raise
            approved = True
        elif decision.tier == "notify":
            self.bus.publish("call.notify", event)

        secret_values: list[str] = []
        try:
            run_args, secret_values = self.secrets.resolve(caller, definition, args)
        except StockadeError as e:
            await self._record(base, safe_args, decision, e, t0, "complete")
            self._approval_done(approved, call_id, None, e)
            raise
        if secret_values:
            safe_args = redact(args, secret_values)
        if definition.side_effects:
            # The intent is durable before anything happens (a crash mid-call leaves a trace).
            await self._record(base, safe_args, decision, None, t0, "decision")
        phase = "outcome" if definition.side_effects else "complete"
        try:
            result = await self._execute(caller, definition, run_args, call_id)
            # Results from the sandbox (our handlers on hostile data, packs' code) are checked against
            # the contract; in-process built-ins are plain code covered by tests, and skipping them
            # keeps ~0.2 ms of jsonschema off the hottest calls.
            if definition.execution != "inprocess" and not definition.output_validator.is_valid(result):
                raise err("Internal", f"{capability} returned a result that does not match its output schema")
        except StockadeError as e:
            e = _scrub(e, secret_values)
            await self._record(base, safe_args, decision, e, t0, phase)
            self._approval_done(approved, call_id, None, e)
            raise e from None
        except Exception as ex:  # a bug in an implementation: never a traceback to the agent
            e = err("Internal", f"{capability} failed unexpectedly ({type(ex).__name__})")
            await self._record(base, safe_args, decision, e, t0, phase)
            self._approval_done(approved, call_id, None, e)
            raise e from None
        if secret_values:
            result = redact(result, secret_values)
        await self._record(base, safe_args, decision, None, t0, phase)
        self._approval_done(approved, call_id, result, None)
        return result

    def _approval_done(self, approved: bool, call_id: str, result: Any, error: StockadeError | None) -> None:
        """Tell the approvals hook how an approved call ended (it stores the outcome for the agent)."""
        done = getattr(self.approvals, "completed", None) if approved else None
        if done is not None:
            done(call_id, result, error)

    async def _execute(self, caller: Caller, d: Definition, args: dict[str, Any], call_id: str) -> dict[str, Any]:
        if d.execution == "sandbox":
            return await self.sandbox.run(caller, d, args, call_id)
        fn = self.registry.impl(d.name)
        ctx = CallContext(caller, d, self, call_id)
        out = fn(ctx, args)
        if asyncio.iscoroutine(out):
            out = await out
        return out

    async def _record(self, base: dict[str, Any], args: Any, decision: Decision | None,
                      error: StockadeError | None, t0: int, phase: str) -> None:
        outcome: dict[str, Any] = {"status": "ok" if error is None else "error"}
        if phase == "decision":
            outcome = {"status": "started"}
        if error is not None:
            outcome["error"] = error.type
            if error.data.get("approval"):
                outcome["approval"] = error.data["approval"]
        rec = {**base, "phase": phase, "args": args,
               "decision": decision.audit() if decision else {"tier": None, "rule": None, "layer": None},
               "outcome": outcome, "duration_us": (time.perf_counter_ns() - t0) // 1000}
        await self.audit.record(rec)

    # -- events that are not calls --------------------------------------------------------------
    async def record_event(self, kind: str, **data: Any) -> None:
        """Approvals decided, policy reloads, vault seal/unseal, pack installs, agent changes."""
        await self.audit.record({"kind": kind, **data})


def _scrub(e: StockadeError, secrets: list[str]) -> StockadeError:
    if not secrets:
        return e
    return StockadeError(e.type, redact(e.message, secrets), e.recovery, redact(e.data, secrets))
