"""The pipeline's contracts, tested directly: stage order, audit phases, error mapping, secrets,
what refused calls cost, and the key re-checked after a wait.

The hooks here are test fakes that record what they are asked (they stand in for parts, not for
a security layer under test); authentication uses the real agents table in a real SQLite home.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from stockade.capabilities.registry import Registry, parse_definitions
from stockade.core import agents
from stockade.core.errors import ErrorType, StockadeError, err
from stockade.core.home import Home
from stockade.core.limits import REFUSED_ARGS_PREFIX_BYTES
from stockade.core.types import Caller, Decision
from stockade.gateway.costs import FailureLimiter
from stockade.gateway.pipeline import STAGES, MemoryAudit, Pipeline
from stockade.gateway.service import init_home

DEFS = """
capabilities:
  - name: test.pure
    purpose: in-process, no side effects
    when_to_use: tests
    input: {type: object, properties: {n: {type: integer}, blob: {}}, additionalProperties: false}
    output: {type: object}
  - name: test.act
    purpose: sandboxed, with side effects and secrets
    when_to_use: tests
    execution: sandbox
    side_effects: true
    secrets: true
    input: {type: object, properties: {cmd: {type: string}}, additionalProperties: false}
    output: {type: object, properties: {out: {type: string}}, required: [out]}
"""
SECRET = "s3cr3t-VALUE-0xdeadbeef"


class Trace(list[str]):
    pass


class FakePolicy:
    def __init__(self, trace: Trace, tiers: dict[str, Decision] | None = None, boom: Exception | None = None):
        self.trace, self.tiers, self.boom = trace, tiers or {}, boom

    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        self.trace.append("policy")
        if self.boom is not None:
            raise self.boom
        return self.tiers.get(capability, Decision("autonomous", rule="r", layer="agent"))

    def peek(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        return self.decide(agent, capability, args)

    def visible(self, agent: str, capability: str) -> bool:
        return True


class FakeApprovals:
    def __init__(self, trace: Trace, during_wait: Any = None, refuse: StockadeError | None = None):
        self.trace, self.during_wait, self.refuse = trace, during_wait, refuse
        self.done: list[tuple[str, Any, str | None]] = []

    async def request(self, caller: Caller, definition: Any, args: dict[str, Any], decision: Decision,
                      call_id: str) -> None:
        self.trace.append("approval")
        await asyncio.sleep(0)
        if self.during_wait is not None:
            self.during_wait()
        if self.refuse is not None:
            raise self.refuse

    def completed(self, call_id: str, result: Any, error: StockadeError | None) -> None:
        self.trace.append("approval.completed")
        self.done.append((call_id, result, error.type if error else None))


class FakeSecrets:
    def __init__(self, trace: Trace, refuse: StockadeError | None = None):
        self.trace, self.refuse = trace, refuse

    def resolve(self, caller: Caller, definition: Any, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        self.trace.append("secrets")
        if self.refuse is not None:
            raise self.refuse
        if "${secret:k}" in json.dumps(args):
            return json.loads(json.dumps(args).replace("${secret:k}", SECRET)), [SECRET]
        return args, []


class FakeSandbox:
    def __init__(self, trace: Trace, outcome: Any = None):
        self.trace, self.outcome = trace, outcome
        self.ran: list[dict[str, Any]] = []

    async def run(self, caller: Caller, definition: Any, args: dict[str, Any], call_id: str) -> dict[str, Any]:
        self.trace.append("execute")
        self.ran.append(args)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome if self.outcome is not None else {"out": f"ran {args.get('cmd', '')}"}


class TracingAudit(MemoryAudit):
    def __init__(self, trace: Trace, over: dict[str, float] | None = None):
        super().__init__()
        self.trace, self.over = trace, over or {}

    async def record(self, rec: dict[str, Any]) -> None:
        self.trace.append(f"audit:{rec.get('phase') or rec.get('kind')}")
        await super().record(rec)

    def agent_over_budget(self, agent: str) -> float | None:
        return self.over.get(agent)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, tmp_path: Any, **hooks: Any):
        self.home = Home.at(tmp_path / "home")
        init_home(self.home)
        self.db = self.home.db()
        self.key = agents.create(self.db, "alice")
        self.trace = Trace()
        self.pure_runs: list[dict[str, Any]] = []

        def pure(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
            self.trace.append("execute")
            self.pure_runs.append(args)
            return {"n": args.get("n")}

        reg = Registry(parse_definitions(DEFS, "test.yaml"), {"test.pure": pure, "test.act": pure})
        self.policy = hooks.get("policy") or FakePolicy(self.trace)
        self.approvals = hooks.get("approvals") or FakeApprovals(self.trace)
        self.secrets = hooks.get("secrets") or FakeSecrets(self.trace)
        self.sandbox = hooks.get("sandbox") or FakeSandbox(self.trace)
        self.audit = hooks.get("audit") or TracingAudit(self.trace)
        self.clock = Clock()
        self.p = Pipeline(self.home, reg, self.db, policy=self.policy, audit=self.audit, approvals=self.approvals,
                          secrets=self.secrets, sandbox=self.sandbox, failures=FailureLimiter(burst=5, per_second=0.1,
                                                                                              cooldown=30))
        self.p.clock = self.clock
        self.caller = self.p.authenticate(self.key, "s1", "test")

    def call(self, cap: str, args: Any, caller: Caller | None = None) -> dict[str, Any] | StockadeError:
        async def go() -> dict[str, Any] | StockadeError:
            try:
                return await self.p.invoke(caller or self.caller, cap, args)
            except StockadeError as e:
                return e
        return asyncio.run(go())

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.audit.records  # type: ignore[no-any-return]


def approval_required(env_trace: Trace) -> FakePolicy:
    return FakePolicy(env_trace, {"test.act": Decision("approval_required", rule="hold", layer="org")})


# -- stage order and audit phases --------------------------------------------------------------
def test_stages_run_in_order_for_a_held_sandboxed_call(tmp_path: Any) -> None:
    env = Env(tmp_path)
    env.policy.tiers["test.act"] = Decision("approval_required", rule="hold", layer="org")  # type: ignore[attr-defined]
    r = env.call("test.act", {"cmd": "x"})
    assert r == {"out": "ran x"}
    assert env.trace == ["policy", "approval", "secrets", "audit:decision", "execute", "audit:outcome",
                         "approval.completed"]
    assert [rec["phase"] for rec in env.records] == ["decision", "outcome"]
    assert env.records[0]["outcome"] == {"status": "started"}
    assert env.records[1]["outcome"] == {"status": "ok"}
    assert env.records[1]["decision"] == {"tier": "approval_required", "rule": "hold", "layer": "org"}
    assert STAGES.index("approval") < STAGES.index("reauthenticate") < STAGES.index("execute")


def test_a_call_without_side_effects_has_one_complete_record(tmp_path: Any) -> None:
    env = Env(tmp_path)
    assert env.call("test.pure", {"n": 3}) == {"n": 3}
    assert env.trace == ["policy", "secrets", "execute", "audit:complete"]
    (rec,) = env.records
    assert rec["phase"] == "complete" and rec["args"] == {"n": 3} and rec["outcome"] == {"status": "ok"}
    assert rec["agent"] == "alice" and rec["session"] == "s1" and rec["capability"] == "test.pure"


def test_a_failed_side_effect_keeps_its_intent_and_its_outcome(tmp_path: Any) -> None:
    env = Env(tmp_path, sandbox=None)
    env.sandbox.outcome = err("Timeout", "too slow")  # type: ignore[attr-defined]
    r = env.call("test.act", {"cmd": "x"})
    assert isinstance(r, StockadeError) and r.type == "Timeout"
    assert [(x["phase"], x["outcome"]) for x in env.records] == [
        ("decision", {"status": "started"}), ("outcome", {"status": "error", "error": "Timeout"})]


# -- error mapping: each stage's failure, one record each --------------------------------------
@pytest.mark.parametrize("case", ["unknown", "not-object", "schema", "denied", "rate", "rejected", "secret",
                                  "typed", "bug", "bad-output"])
def test_each_failure_is_structured_and_audited_once(tmp_path: Any, case: str) -> None:
    trace = Trace()
    hooks: dict[str, Any] = {}
    cap, args = "test.act", {"cmd": "x"}
    if case == "unknown":
        cap = "no.such"
    elif case == "not-object":
        args = [1, 2]  # type: ignore[assignment]
    elif case == "schema":
        args = {"cmd": 5}  # type: ignore[dict-item]
    elif case == "denied":
        hooks["policy"] = FakePolicy(trace, {cap: Decision("blocked", rule="no", layer="system", reason="nope")})
    elif case == "rate":
        hooks["policy"] = FakePolicy(trace, {cap: Decision("blocked", rule="rl", layer="agent", retry_after=2.5)})
    elif case == "rejected":
        hooks["policy"] = approval_required(trace)
        hooks["approvals"] = FakeApprovals(trace, refuse=err("ApprovalRejected", "no", approval="apr_1"))
    elif case == "secret":
        hooks["secrets"] = FakeSecrets(trace, refuse=err("SecretNotInScope", "not yours"))
    elif case == "typed":
        hooks["sandbox"] = FakeSandbox(trace, err("PathDenied", "no"))
    elif case == "bug":
        hooks["sandbox"] = FakeSandbox(trace, KeyError("oops"))
    elif case == "bad-output":
        hooks["sandbox"] = FakeSandbox(trace, {"unexpected": 1})
    want = {"unknown": "CapabilityNotFound", "not-object": "InvalidInput", "schema": "InvalidInput",
            "denied": "PolicyDenied", "rate": "RateLimited", "rejected": "ApprovalRejected",
            "secret": "SecretNotInScope", "typed": "PathDenied", "bug": "Internal", "bad-output": "Internal"}[case]
    env = Env(tmp_path, **hooks)
    r = env.call(cap, args)
    assert isinstance(r, StockadeError) and r.type == want
    assert r.code == (ErrorType.of(want).code if ErrorType.of(want) else r.code)
    finals = [x for x in env.records if x["phase"] != "decision"]
    assert len(finals) == 1 and finals[0]["outcome"]["error"] == want
    if case == "rate":
        assert r.data["retry_after"] == 2.5
    if case == "rejected":
        assert finals[0]["outcome"]["approval"] == "apr_1"
    if case in ("unknown", "not-object", "schema", "denied", "rate", "rejected", "secret"):
        assert "execute" not in env.trace


def test_a_policy_that_cannot_be_evaluated_fails_closed(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    trace = Trace()
    env = Env(tmp_path, policy=FakePolicy(trace, boom=ZeroDivisionError("bad rule")))
    with caplog.at_level(logging.ERROR, logger="stockade"):
        r = env.call("test.pure", {"n": 1})
    assert isinstance(r, StockadeError) and r.type == "PolicyDenied"
    assert env.records[0]["decision"]["rule"] == "evaluation-error"
    assert env.pure_runs == []
    assert "ZeroDivisionError" in caplog.text


def test_an_unexpected_exception_is_logged_with_its_traceback(tmp_path: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    trace = Trace()
    env = Env(tmp_path, sandbox=FakeSandbox(trace, KeyError("the-bug")))
    with caplog.at_level(logging.ERROR, logger="stockade"):
        r = env.call("test.act", {"cmd": "x"})
    assert isinstance(r, StockadeError) and r.type == "Internal"
    assert "the-bug" not in r.message and "Traceback" not in json.dumps(r.to_dict())
    (entry,) = [x for x in caplog.records if x.name == "stockade"]
    assert entry.exc_info is not None and "the-bug" in caplog.text and "stage execute" in entry.getMessage()


# -- secrets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ok", "echo-error"])
def test_resolved_secret_values_never_leave_the_pipeline(tmp_path: Any, how: str) -> None:
    trace = Trace()

    class Echo(FakeSandbox):
        async def run(self, caller: Caller, definition: Any, args: dict[str, Any], call_id: str) -> dict[str, Any]:
            self.trace.append("execute")
            self.ran.append(args)
            if how == "echo-error":
                raise err("NetworkError", f"server said {args['cmd']}", echoed=args["cmd"])
            return {"out": args["cmd"]}

    env = Env(tmp_path, sandbox=Echo(trace))
    r = env.call("test.act", {"cmd": "use ${secret:k}"})
    assert env.sandbox.ran == [{"cmd": f"use {SECRET}"}]  # type: ignore[attr-defined]
    shown = json.dumps(r if isinstance(r, dict) else r.to_dict())
    assert SECRET not in shown and SECRET not in json.dumps(env.records)
    assert "${secret:k}" in json.dumps(env.records)   # the audit shows the reference, not the value


# -- what refusals cost (issue 13 item 4) ------------------------------------------------------
def test_a_refused_call_keeps_a_digest_and_a_bounded_prefix(tmp_path: Any) -> None:
    env = Env(tmp_path)
    big = {"n": "x" * 200_000}
    r = env.call("test.pure", big)
    assert isinstance(r, StockadeError) and r.type == "InvalidInput"
    (rec,) = env.records
    kept = rec["args"]
    assert kept["truncated"] is True and kept["bytes"] > 200_000 and len(kept["sha256"]) == 64
    assert len(kept["prefix"].encode()) <= REFUSED_ARGS_PREFIX_BYTES
    assert len(json.dumps(rec)) < REFUSED_ARGS_PREFIX_BYTES + 1024
    small = env.call("no.such", {"a": 1})
    assert isinstance(small, StockadeError)
    assert env.records[-1]["args"]["prefix"] == '{"a":1}' and "truncated" not in env.records[-1]["args"]


def test_repeated_failures_put_the_agent_in_a_cooldown_without_further_work(tmp_path: Any) -> None:
    env = Env(tmp_path)
    bob = env.p.authenticate(agents.create(env.db, "bob"), "s2", "test")
    for _ in range(6):   # burst of 5, the 6th empties the bucket
        assert isinstance(env.call("test.pure", {"n": "bad"}), StockadeError)
    env.trace.clear()
    r = env.call("test.pure", {"n": 1})   # a valid call is refused too, before any part works
    assert isinstance(r, StockadeError) and r.type == "RateLimited" and 0 < r.data["retry_after"] <= 30
    assert env.trace == ["audit:complete"] and env.pure_runs == []
    for _ in range(50):
        env.call("test.pure", {"n": 1})
    assert env.trace == ["audit:complete"]           # the rest are counted, not written one by one
    assert env.call("test.pure", {"n": 2}, caller=bob) == {"n": 2}   # another agent is not affected
    env.clock.now += 31
    assert env.call("test.pure", {"n": 3}) == {"n": 3}
    throttled = [x for x in env.records if x.get("kind") == "calls.throttled"]
    assert throttled == [{"kind": "calls.throttled", "agent": "alice", "count": 50}]


def test_successful_calls_cost_nothing(tmp_path: Any) -> None:
    env = Env(tmp_path)
    for i in range(40):
        assert env.call("test.pure", {"n": i}) == {"n": i}


def test_an_agent_over_its_audit_budget_is_refused_before_any_work(tmp_path: Any) -> None:
    trace = Trace()
    env = Env(tmp_path, audit=TracingAudit(trace, over={"alice": 12.5}))
    r = env.call("test.pure", {"n": 1})
    assert isinstance(r, StockadeError) and r.type == "RateLimited" and r.data["retry_after"] == 12.5
    assert r.data["rule"] == "audit-budget"
    assert "policy" not in env.trace and env.pure_runs == []


# -- the key after a wait (issue 13 item 7) ----------------------------------------------------
def test_a_call_whose_agent_is_revoked_while_held_never_runs(tmp_path: Any) -> None:
    trace = Trace()
    holder: dict[str, Any] = {}
    approvals = FakeApprovals(trace, during_wait=lambda: agents.revoke(holder["db"], "alice"))
    env = Env(tmp_path, policy=approval_required(trace), approvals=approvals)
    holder["db"] = env.db
    r = env.call("test.act", {"cmd": "x"})
    assert isinstance(r, StockadeError) and r.type == "Unauthenticated"
    assert env.sandbox.ran == [] and "execute" not in env.trace  # type: ignore[attr-defined]
    assert approvals.done and approvals.done[-1][2] == "Unauthenticated"
    assert env.records[-1]["outcome"]["error"] == "Unauthenticated"


def test_a_call_whose_key_is_rotated_while_held_never_runs(tmp_path: Any) -> None:
    trace = Trace()
    holder: dict[str, Any] = {}
    approvals = FakeApprovals(trace, during_wait=lambda: agents.rotate(holder["db"], "alice"))
    env = Env(tmp_path, policy=approval_required(trace), approvals=approvals)
    holder["db"] = env.db
    r = env.call("test.act", {"cmd": "x"})
    assert isinstance(r, StockadeError) and r.type == "Unauthenticated"
    assert env.sandbox.ran == []  # type: ignore[attr-defined]
