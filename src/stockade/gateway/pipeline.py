"""The invoke pipeline: the one path from any transport to a capability.

    authenticate -> cost (failure cooldown, audit budget) -> look up + validate -> policy
        -> approvals -> re-authenticate (after the wait) -> secrets -> execute
        -> shape result -> redact -> audit (durable) -> return

Every transport (JSON-RPC, MCP Streamable HTTP, MCP WebSocket, the stdio bridge via HTTP, the
dashboard) calls `Pipeline.invoke`. Parts plug in through the hook protocols of
`stockade.core.hooks`; each default below is the conservative behaviour of a part that is not
configured.

`invoke` runs the stages in one `try` with a stage variable: every failure, expected or not,
ends in `_fail`, which writes one audit record whose shape depends on how far the call got.
A call refused before policy let it through keeps only a digest and a prefix of its arguments
(`costs.refused_args`), and costs the agent from its failure budget.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stockade.audit.redact import redact
from stockade.capabilities.registry import Definition, Registry
from stockade.core import agents
from stockade.core.errors import StockadeError, err
from stockade.core.events import EventBus
from stockade.core.home import Home
from stockade.core.hooks import ApprovalHook, AuditHook, ExecutorHook, PolicyHook, SecretsHook
from stockade.core.types import (  # noqa: F401  (re-exported for the transports)
    TIER_ORDER,
    Caller,
    Decision,
    ProgressFn,
    progress_reporter,
    report_progress,
)
from stockade.edge.authlimit import AuthFailures, presented, source_key
from stockade.gateway.costs import FailureLimiter, encode_args, refused_args

log = logging.getLogger("stockade")

# Stages in the order `invoke` runs them. A failure in one of the first four refuses the call
# (it counts against the agent's failure budget and its arguments are kept only as a digest and
# a prefix); from `approval` on, the call was allowed and its record keeps its arguments.
STAGES = ("authenticate", "cost", "validate", "policy", "approval", "reauthenticate", "secrets", "execute")
_REFUSAL_STAGES = frozenset(STAGES[:4])
_COUNTED = frozenset({"InvalidInput", "CapabilityNotFound", "PolicyDenied", "RateLimited", "Unauthenticated"})


@dataclass
class CallContext:
    """What an in-process implementation gets."""

    caller: Caller
    definition: Definition
    pipeline: Pipeline
    call_id: str


# -- defaults for parts that are not configured ----------------------------------------------
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

    def completed(self, call_id: str, result: Any, error: StockadeError | None) -> None:
        return None


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

    def agent_over_budget(self, agent: str) -> float | None:
        return None


@dataclass
class _Call:
    """One call as it moves through the stages (what `_fail` needs to write its record)."""

    caller: Caller
    capability: str
    args: Any
    call_id: str
    t0: int
    definition: Definition | None = None
    decision: Decision | None = None
    safe_args: Any = None
    approved: bool = False              # approved calls report their outcome back to the hook
    secret_values: list[str] = field(default_factory=list)
    started: bool = False               # the "decision" record (intent) is written
    marks: list[tuple[str, int]] = field(default_factory=list)   # (stage, entered at ns): stage latencies

    def enter(self, stage: str) -> str:
        self.marks.append((stage, time.perf_counter_ns()))
        return stage

    def stage_seconds(self) -> dict[str, float]:
        ends = [t for _, t in self.marks[1:]] + [time.perf_counter_ns()]
        return {stage: (end - t) / 1e9 for (stage, t), end in zip(self.marks, ends, strict=True)}

    @property
    def base(self) -> dict[str, Any]:
        return {"agent": self.caller.agent, "session": self.caller.session, "capability": self.capability,
                "call": self.call_id}


# -- the pipeline ----------------------------------------------------------------------------
class Pipeline:
    def __init__(self, home: Home, registry: Registry, db: sqlite3.Connection, *,
                 policy: PolicyHook | None = None, audit: AuditHook | None = None,
                 approvals: ApprovalHook | None = None, secrets: SecretsHook | None = None,
                 sandbox: ExecutorHook | None = None, bus: EventBus | None = None,
                 failures: FailureLimiter | None = None):
        self.home = home
        self.registry = registry
        self.db = db
        self.policy: PolicyHook = policy or NoPolicy()
        self.audit: AuditHook = audit or MemoryAudit()
        self.approvals: ApprovalHook = approvals or NoApprovals()
        self.secrets: SecretsHook = secrets or NoSecrets()
        self.sandbox: ExecutorHook = sandbox or NoSandbox()
        self.bus = bus or EventBus()
        self.failures = failures or FailureLimiter()
        self.auth_failures = AuthFailures()
        self.clock = time.monotonic
        self.started = time.time()
        self.health: dict[str, Any] = {}   # parts report layer status here (system.health, doctor)
        # Told of every call's final record and its stage latencies (metrics); must not raise or block.
        self.observers: list[Callable[[dict[str, Any], dict[str, float]], None]] = []

    # -- authentication ---------------------------------------------------------------------
    def authenticate(self, key: str | None, session: str, transport: str) -> Caller:
        agent = agents.authenticate(self.db, key)
        return Caller(agent.name, agents.key_hash(key or ""), session, transport)

    async def admit(self, key: str | None, session: str, transport: str, host: str | None) -> Caller:
        """Authenticate a request from `host` on any transport, under the failed-authentication throttle.

        The key is always checked, so a valid one passes even from a throttled address (local
        agents share 127.0.0.1; see `edge.authlimit`). A failure from a source whose bucket is
        empty is refused as `RateLimited` and only counted. Other failures are counted too; the
        audit log gets the window's first failure described (never the key), a summary per window
        and one `auth.burst` when the bucket empties, which is also a critical event for the owner.
        """
        source, now = source_key(host), self.clock()
        try:
            caller = self.authenticate(key, session, transport)
        except StockadeError as e:
            if e.type != "Unavailable":   # stockade.db locked elsewhere says nothing about the key
                await self._refuse(key, source, transport, now)
            raise
        await self._write_auth(self.auth_failures.succeeded(source, now))
        return caller

    async def _refuse(self, key: str | None, source: str, transport: str, now: float) -> None:
        """Count one failed authentication; raise `RateLimited` instead when the source is throttled."""
        wait = self.auth_failures.admits(source, now)
        if wait is not None:
            await self._write_auth(self.auth_failures.throttled(source, transport, now))
            raise err("RateLimited", "too many failed authentications from this address; try again later",
                      retry_after=round(wait, 3), rule="auth-failures")
        reason, detail = self._unauthenticated_reason(key, agents.key_hash(key or ""))
        out = self.auth_failures.failed(source, transport, reason, now, detail)
        await self._write_auth([r for r in (out.first, out.burst) if r] + out.summaries)
        if out.burst is not None:
            self.bus.publish("auth.burst", {k: v for k, v in out.burst.items() if k != "kind"}, "critical")

    def _unauthenticated_reason(self, key: str | None, digest: bytes) -> tuple[str, dict[str, Any]]:
        """Why a key failed, for the owner: missing, malformed, unknown, or a revoked agent's (named)."""
        detail = presented(key)
        if key is None:
            return "missing", detail
        if not agents.KEY_RE.match(key):
            return "malformed", detail
        r = self.db.execute("SELECT name FROM agents WHERE key_hash=? AND revoked_at IS NOT NULL",
                            (digest,)).fetchone()
        if r is not None:
            return "revoked", {**detail, "agent": r[0]}
        return "unknown", detail

    async def flush_auth(self, final: bool = False) -> None:
        """Write the summaries of failed-authentication windows that ended (all of them when `final`)."""
        now = self.clock()
        await self._write_auth(self.auth_failures.flush(now) if final else self.auth_failures.due(now))

    async def _write_auth(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            await self.audit.record(dict(rec))

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
        """Run one call through every stage. Raises StockadeError; returns the shaped result."""
        call = _Call(caller, capability, args, uuid.uuid4().hex, time.perf_counter_ns())
        stage = call.enter(STAGES[0])
        try:
            self._recheck(caller)
            stage = call.enter("cost")
            await self._charge(caller)
            stage = call.enter("validate")
            call.definition = self._validate(capability, args)
            stage = call.enter("policy")
            call.decision = self._decide(call, call.definition)
            stage = call.enter("approval")
            await self._approve(call, call.definition, call.decision)
            stage = call.enter("reauthenticate")
            self._recheck(caller)        # the key may have been revoked while the call waited
            stage = call.enter("secrets")
            run_args = self._resolve(call, call.definition)
            stage = call.enter("execute")
            result = await self._run(call, call.definition, call.decision, run_args)
        except StockadeError as e:
            raise await self._fail(call, stage, _scrub(e, call.secret_values)) from None
        except Exception as ex:  # a bug in a part: logged for the owner, never a traceback to the agent
            log.exception("call %s (%s by %s) failed unexpectedly in stage %s",
                          call.call_id, capability, caller.agent, stage)
            internal = err("Internal", f"{capability} failed unexpectedly ({type(ex).__name__})")
            raise await self._fail(call, stage, internal) from None
        if call.secret_values:
            result = redact(result, call.secret_values)
        await self._record(call, None, "outcome" if call.started else "complete")
        self._approval_done(call, result, None)
        return result

    # -- the stages ------------------------------------------------------------------------------
    async def _charge(self, caller: Caller) -> None:
        """Refuse at once an agent cooling down after too many failures, or over its audit budget."""
        wait = self.failures.blocked(caller.agent, self.clock())
        over = self.audit.agent_over_budget(caller.agent)
        if wait is None and over is None:
            suppressed = self.failures.take_suppressed(caller.agent)
            if suppressed:
                await self.record_event("calls.throttled", agent=caller.agent, count=suppressed)
            return
        retry = max(wait or 0.0, over or 0.0)
        why = "too many refused calls" if wait is not None else "this agent's audit budget is spent"
        raise err("RateLimited", f"{why}; calls are refused for a while", retry_after=round(retry, 3),
                  rule="failure-cooldown" if wait is not None else "audit-budget")

    def _validate(self, capability: str, args: Any) -> Definition:
        if not isinstance(args, dict):
            raise err("InvalidInput", "arguments must be a JSON object")
        if capability not in self.registry:
            raise err("CapabilityNotFound", f"no capability named {capability!r}")
        definition = self.registry.get(capability)
        errors = sorted(definition.input_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(arguments)"
            raise err("InvalidInput", f"{where}: {first.message}"[:500],
                      errors=[f"{'/'.join(str(p) for p in x.absolute_path) or '(arguments)'}: {x.message}"[:200]
                              for x in errors[:10]])
        return definition

    def _decide(self, call: _Call, definition: Definition) -> Decision:
        try:
            decision = self.policy.decide(call.caller.agent, call.capability, call.args)
        except StockadeError:
            raise
        except Exception:
            log.exception("policy evaluation failed for %s by %s", call.capability, call.caller.agent)
            decision = Decision("blocked", rule="evaluation-error", layer="system",
                                reason="the policy could not be evaluated")   # fail closed
        if definition.pack and TIER_ORDER[definition.default_tier] > TIER_ORDER.get(decision.tier, 3):
            # A pack's declared tier is a floor: the owner's policy may tighten it, never loosen it.
            decision = Decision(definition.default_tier, rule=f"pack:{definition.pack}", layer="pack",
                                reason=f"{definition.pack} asks for {definition.default_tier}", layers=decision.layers)
        call.decision = decision
        call.safe_args = redact(call.args)
        if decision.tier == "blocked":
            event = self._event(call, decision)
            if decision.retry_after is not None:
                self.bus.publish("call.rate_limited", event, "warning")
                raise err("RateLimited", f"rate limit exceeded for {call.capability}",
                          retry_after=round(decision.retry_after, 3), rule=decision.rule)
            self.bus.publish("call.denied", event, "warning")
            raise err("PolicyDenied", decision.reason or f"{call.capability} is blocked by policy",
                      rule=decision.rule, layer=decision.layer)
        return decision

    async def _approve(self, call: _Call, definition: Definition, decision: Decision) -> None:
        if decision.tier == "approval_required":
            await self.approvals.request(call.caller, definition, call.args, decision, call.call_id)
            call.approved = True
        elif decision.tier == "notify":
            self.bus.publish("call.notify", self._event(call, decision))

    def _resolve(self, call: _Call, definition: Definition) -> dict[str, Any]:
        run_args, call.secret_values = self.secrets.resolve(call.caller, definition, call.args)
        if call.secret_values:
            call.safe_args = redact(call.args, call.secret_values)
        return run_args

    async def _run(self, call: _Call, definition: Definition, decision: Decision,
                   run_args: dict[str, Any]) -> dict[str, Any]:
        if definition.side_effects:
            # The intent is durable before anything happens (a crash mid-call leaves a trace).
            await self._record(call, None, "decision")
            call.started = True
        result = await self._execute(call.caller, definition, run_args, call.call_id)
        # Results from the sandbox (our handlers on hostile data, packs' code) are checked against
        # the contract; in-process built-ins are plain code covered by tests, and skipping them
        # keeps the check off the hottest calls.
        if definition.execution != "inprocess" and not definition.output_valid(result):
            raise err("Internal", f"{call.capability} returned a result that does not match its output schema")
        return result

    async def _execute(self, caller: Caller, d: Definition, args: dict[str, Any], call_id: str) -> dict[str, Any]:
        if d.execution == "sandbox":
            return await self.sandbox.run(caller, d, args, call_id)
        fn = self.registry.impl(d.name)
        ctx = CallContext(caller, d, self, call_id)
        out = fn(ctx, args)
        if asyncio.iscoroutine(out):
            out = await out
        return out

    # -- endings ---------------------------------------------------------------------------------
    async def _fail(self, call: _Call, stage: str, e: StockadeError) -> StockadeError:
        """Audit a failed call (bounded when it was refused) and charge the agent; returns `e`."""
        if stage in _REFUSAL_STAGES:
            if stage == "cost" and not self.failures.suppress(call.caller.agent):
                return e      # counted into the next `calls.throttled` record, not written alone
            if e.type in _COUNTED and stage != "cost":
                self.failures.failed(call.caller.agent, self.clock())
            call.safe_args = refused_args(encode_args(redact(call.args)))
        elif call.safe_args is None:
            call.safe_args = redact(call.args)
        await self._record(call, e, "outcome" if call.started else "complete")
        self._approval_done(call, None, e)
        return e

    def _approval_done(self, call: _Call, result: Any, error: StockadeError | None) -> None:
        """Tell the approvals hook how an approved call ended (it stores the outcome for the agent)."""
        if call.approved:
            self.approvals.completed(call.call_id, result, error)

    def _event(self, call: _Call, decision: Decision) -> dict[str, Any]:
        return {"agent": call.caller.agent, "capability": call.capability, "args": call.safe_args,
                "tier": decision.tier, "rule": decision.rule, "call": call.call_id}

    async def _record(self, call: _Call, error: StockadeError | None, phase: str) -> None:
        outcome: dict[str, Any] = {"status": "ok" if error is None else "error"}
        if phase == "decision":
            outcome = {"status": "started"}
        if error is not None:
            outcome["error"] = error.type
            if error.data.get("approval"):
                outcome["approval"] = error.data["approval"]
        decision = call.decision
        rec = {**call.base, "phase": phase, "args": call.safe_args,
               "decision": decision.audit() if decision else {"tier": None, "rule": None, "layer": None},
               "outcome": outcome, "duration_us": (time.perf_counter_ns() - call.t0) // 1000}
        await self.audit.record(rec)
        if phase != "decision":
            for observe in self.observers:
                observe(rec, call.stage_seconds())

    async def refuse(self, caller: Caller, e: StockadeError, raw: bytes | str) -> None:
        """Audit a request the edge refused after authenticating it (not JSON, too deep, NaN...).

        Costs the agent like a refused call; the record keeps a digest and a prefix of the body.
        """
        agent = caller.agent
        if self.failures.blocked(agent, self.clock()) is not None or self.audit.agent_over_budget(agent):
            if not self.failures.suppress(agent):
                return
        else:
            self.failures.failed(agent, self.clock())
        body = raw.encode("utf-8", "backslashreplace") if isinstance(raw, str) else raw
        await self.audit.record({"kind": "request.refused", "agent": agent, "session": caller.session,
                                 "transport": caller.transport, "error": e.type, "message": e.message[:300],
                                 "body": refused_args(body)})

    # -- events that are not calls --------------------------------------------------------------
    async def record_event(self, kind: str, **data: Any) -> None:
        """Approvals decided, policy reloads, vault seal/unseal, pack installs, agent changes."""
        await self.audit.record({"kind": kind, **data})


def _scrub(e: StockadeError, secrets: list[str]) -> StockadeError:
    if not secrets:
        return e
    return StockadeError(e.type, redact(e.message, secrets), e.recovery, redact(e.data, secrets))
