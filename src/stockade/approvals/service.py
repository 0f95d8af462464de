"""The approvals hook of the invoke pipeline and the owner's decisions.

`request()` is what the pipeline awaits for an `approval_required` call. It creates (or joins)
an approval bound to agent, capability and the hash of the canonical arguments, then holds the
call for up to `approvals.hold_seconds`. Returning means "approved: run it now" and the pipeline
executes; otherwise it raises ApprovalRejected, ApprovalExpired or ApprovalPending(approval=ID).
Only the held coroutine waits: other calls of the same agent run on as usual.

Exactly once: an approval is claimed (`approved -> running`) by a single executor, either the
held call or, when nobody holds it any more, a background task that re-enters the pipeline with
the stored arguments (through every step again: a policy that has since blocked the call wins).
The outcome is stored (redacted) so the agent can fetch it with `approvals.status` /
`agent.approval`.

Every decision is an audit record, written before its effect, naming who decided (`by`: the
admin socket's peer credentials, or the dashboard session).

Joining is atomic: for one (agent, capability, arguments) the look-up of a pending approval,
its creation and the registration of the held call happen under one lock, so identical calls
that arrive together make one approval. An approval binds the key that asked for it; after
every wait, and before the background executor runs it, that key is checked again, and
revoking the agent expires its approvals and ends its grants in the revoke's own transaction.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from stockade.approvals import store
from stockade.approvals.core import (
    APPROVED,
    EXECUTED,
    EXPIRED,
    FAILED,
    PENDING,
    REJECTED,
    RUNNING,
    args_hash,
    canonical_args,
    transition,
)
from stockade.audit.redact import redact
from stockade.core import agents
from stockade.core.errors import StockadeError, err
from stockade.core.types import Caller, report_progress

# Set by the background executor so that `request()` recognises the approved call it re-enters.
_RESUME: contextvars.ContextVar[str | None] = contextvars.ContextVar("stockade_approval_resume", default=None)
# While a call is held, the client hears about it every PROGRESS_EVERY seconds (MCP progress
# notifications through `pipeline.report_progress`, a no-op on transports without them).
PROGRESS_EVERY = 10.0
# How long the transport wants a call held (None: `approvals.hold_seconds`). An MCP client that
# negotiated the Tasks extension gets its task handle at once (0) instead of a held request.
HOLD_OVERRIDE: contextvars.ContextVar[float | None] = contextvars.ContextVar("stockade_approval_hold", default=None)
FINAL = (EXECUTED, FAILED, REJECTED, EXPIRED)
By = str | dict[str, Any]


def _revoked_error(aid: str) -> StockadeError:
    return err("Unauthenticated", "the agent's key was revoked or replaced while this call waited for "
               "approval; it did not run", approval=aid)


class ApprovalService:
    def __init__(self, pipeline: Any, *, ttl: float, hold_seconds: float,
                 clock: Callable[[], float] = time.time):
        self.pipeline = pipeline
        self.db: sqlite3.Connection = pipeline.db
        self.bus = pipeline.bus
        self.ttl = ttl
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._waiters: dict[str, asyncio.Event] = {}   # approval id -> the one held call
        self._calls: dict[str, str] = {}                # pipeline call id -> approval id it executes
        self._changed = asyncio.Condition()
        self._decide_lock = asyncio.Lock()
        self._join_locks: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[Any] | None = None
        self._releasing = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover from a previous run, then expire old approvals periodically."""
        now = self.clock()
        for a in store.list_(self.db, status=RUNNING, limit=10_000):
            # It may or may not have run before the gateway stopped: never run it twice.
            self._finish(a.id, FAILED, error=err("Internal", "the gateway stopped while this approved call was "
                                                              "running; its outcome is unknown (see the audit log)"))
        for a in store.list_(self.db, status=APPROVED, limit=10_000):
            self._spawn(self._execute_later(a.id))
        await self.sweep(now)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="approvals-sweep")

    def release_all(self) -> None:
        """The gateway is stopping: held calls return ApprovalPending now (the approval stays
        pending and can be decided after a restart) instead of being cut off."""
        self._releasing = True
        for ev in list(self._waiters.values()):
            ev.set()

    async def stop(self) -> None:
        self.release_all()
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self.ttl / 4)))
            try:
                await self.sweep(self.clock())
            except Exception:  # noqa: S112 - the next round retries; the audit part reports health
                continue

    async def sweep(self, now: float) -> int:
        """Mark pending approvals past their expiry as expired (audited, announced)."""
        n = 0
        for a in store.due_for_expiry(self.db, now):
            async with self._decide_lock:
                cur = store.get(self.db, a.id)
                if cur is None or cur.status != PENDING:
                    continue
                await self.pipeline.record_event("approval.expired", approval=a.id, agent=a.agent,
                                                 capability=a.capability, args_hash=a.args_hash)
                store.set_status(self.db, a.id, EXPIRED, only_from=PENDING, args_json=None, finished_at=now)
                self.bus.publish("approval.expired", {"approval": a.id, "agent": a.agent, "capability": a.capability})
                n += 1
            await self._notify(a.id)
        return n

    async def _notify(self, aid: str) -> None:
        ev = self._waiters.get(aid)
        if ev is not None:
            ev.set()
        async with self._changed:
            self._changed.notify_all()

    # -- the pipeline hook -------------------------------------------------------------------
    async def request(self, caller: Any, definition: Any, args: dict[str, Any], decision: Any,
                      call_id: str) -> None:
        now = self.clock()
        h = args_hash(args)
        resume = _RESUME.get()
        if resume is not None:
            a = store.get(self.db, resume)
            if (a is None or a.status != RUNNING or a.agent != caller.agent or a.capability != definition.name
                    or a.args_hash != h or a.exec_call_id is not None):
                raise err("ApprovalPending", "this call does not match the approval being executed", approval=resume)
            store.set_fields(self.db, resume, exec_call_id=call_id)
            self._calls[call_id] = resume
            return

        grant = store.live_grant(self.db, caller.agent, definition.name, now)
        if grant is not None:
            await self.pipeline.record_event("approval.grant_used", grant=grant.id, agent=caller.agent,
                                             session=caller.session, capability=definition.name, args_hash=h,
                                             call=call_id)
            self.bus.publish("approval.grant_used", {"grant": grant.id, "agent": caller.agent,
                                                     "capability": definition.name, "call": call_id,
                                                     "args": redact(args)})
            return

        a, ev = await self._join(caller, definition, args, h, decision, call_id, now)
        await self._hold(a, ev, call_id, caller.key_hash)

    async def _join(self, caller: Caller, definition: Any, args: dict[str, Any], h: str, decision: Any,
                    call_id: str, now: float) -> tuple[store.Approval, asyncio.Event]:
        """Find or create the approval and register this call as its holder, atomically per call
        identity: without the lock, identical calls arriving together each saw no approval while
        the first one's request record was being written, and each made its own."""
        key = (caller.agent, definition.name, h)
        lock, users = self._join_locks.get(key, (asyncio.Lock(), 0))
        self._join_locks[key] = (lock, users + 1)
        try:
            async with lock:
                existing = store.find_pending(self.db, caller.agent, definition.name, h, now)
                if existing is not None and existing.id in self._waiters:
                    raise err("ApprovalPending", f"an identical call is already waiting for the owner "
                              f"({existing.id})", approval=existing.id, expires=existing.expires_at)
                # An existing one: the agent retried after its hold ended; hold this call on it.
                a = existing or await self._create(caller, definition, args, h, decision, call_id, now)
                ev = asyncio.Event()
                if self._releasing:
                    ev.set()
                self._waiters[a.id] = ev
                return a, ev
        finally:
            lock, users = self._join_locks[key]
            if users <= 1:
                del self._join_locks[key]
            else:
                self._join_locks[key] = (lock, users - 1)

    async def _create(self, caller: Caller, definition: Any, args: dict[str, Any], h: str, decision: Any,
                      call_id: str, now: float) -> store.Approval:
        safe = redact(args)
        a = store.Approval(
            id=store.new_id("apr"), agent=caller.agent, session=caller.session, capability=definition.name,
            args_hash=h, args_json=canonical_args(args), args_redacted=json.dumps(safe, separators=(",", ":")),
            tier=decision.tier, rule=decision.rule, layer=decision.layer, policy_reason=decision.reason,
            call_id=call_id, created_at=now, expires_at=now + self.ttl, status=PENDING, decided_at=None,
            decided_by=None, reason=None, exec_call_id=None, finished_at=None, result_json=None, error_json=None)
        # The request is durable before anyone can decide on it.
        self._writable()       # no approval.requested record for a row that cannot be stored
        await self.pipeline.record_event("approval.requested", approval=a.id, agent=a.agent, session=a.session,
                                         capability=a.capability, args=safe, args_hash=h, rule=decision.rule,
                                         layer=decision.layer, call=call_id, expires=a.expires_at)
        store.insert(self.db, a, caller.key_hash)
        self.bus.publish("approval.requested", {"approval": a.id, "agent": a.agent, "capability": a.capability,
                                                "args": safe, "rule": decision.rule, "reason": decision.reason,
                                                "expires": a.expires_at}, "warning")
        return a

    async def _hold(self, a: store.Approval, ev: asyncio.Event, call_id: str, key_hash: bytes) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()     # durations on the monotonic clock; expiry on the wall clock
        hold = HOLD_OVERRIDE.get()
        total = max(0.0, min(self.hold_seconds if hold is None else hold, a.expires_at - self.clock()))
        cancelled = False
        message = f"waiting for the owner to approve {a.capability} (approval {a.id})"
        try:
            await report_progress(0.0, total, message)
            while True:
                remaining = total - (loop.time() - start)
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(ev.wait(), timeout=min(remaining, PROGRESS_EVERY))
                    break
                except TimeoutError:
                    await report_progress(round(loop.time() - start, 1), total, message)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if self._waiters.get(a.id) is ev:
                del self._waiters[a.id]
            # No await between leaving the waiters and reading the state: a decision made from
            # here on sees no waiter and runs the call in the background instead.
            cur = store.get(self.db, a.id)
            if cancelled and cur is not None and cur.status == APPROVED:
                self._spawn(self._execute_later(a.id))
        if cur is None:
            raise err("Internal", "approval vanished")
        if not store.key_valid(self.db, a.agent, key_hash):
            # Revoked (its approvals expired with it) or rotated while it waited: never runs.
            if cur.status == APPROVED and store.set_status(self.db, a.id, RUNNING, only_from=APPROVED,
                                                           exec_call_id=call_id):
                self._finish(a.id, FAILED, error=_revoked_error(a.id))
            raise _revoked_error(a.id)
        if cur.status == APPROVED and store.set_status(self.db, a.id, RUNNING, only_from=APPROVED,
                                                       exec_call_id=call_id):
            self._calls[call_id] = a.id
            return
        if cur.status == REJECTED:
            raise err("ApprovalRejected", f"the owner rejected this call{': ' + cur.reason if cur.reason else ''}",
                      [{"action": "change_plan", "description": "Do not retry the same call; ask the owner or do "
                                                                "something else."}],
                      approval=a.id, reason=cur.reason)
        if cur.status == EXPIRED or (cur.status == PENDING and self.clock() >= cur.expires_at):
            raise err("ApprovalExpired", "the approval expired before the owner decided",
                      [{"action": "retry", "description": "Call again to ask for a new approval."}], approval=a.id)
        raise err("ApprovalPending", f"{a.capability} is waiting for the owner's approval ({a.id})",
                  [{"action": "poll_approval",
                    "description": f"Fetch the outcome later with approvals.status (JSON-RPC) or agent.approval "
                                   f"with approval={a.id}; the real result is returned once the owner approves."}],
                  approval=a.id, expires=cur.expires_at)

    def completed(self, call_id: str, result: Any, error: StockadeError | None) -> None:
        """Called by the pipeline when an approved call ended."""
        aid = self._calls.pop(call_id, None)
        if aid is None:
            return
        if error is None:
            self._finish(aid, EXECUTED, result=result)
        else:
            self._finish(aid, FAILED, error=error)

    def _finish(self, aid: str, status: str, *, result: Any = None, error: StockadeError | None = None) -> None:
        fields: dict[str, Any] = {"finished_at": self.clock(), "args_json": None}
        if error is not None:
            fields["error_json"] = json.dumps({"type": error.type, "message": error.message}, default=str)
        else:
            fields["result_json"] = store.encode_result(redact(result))
        if store.set_status(self.db, aid, status, only_from=RUNNING, **fields):
            a = store.get(self.db, aid)
            self.bus.publish("approval.executed", {"approval": aid, "agent": a.agent if a else None,
                                                   "capability": a.capability if a else None, "status": status,
                                                   **({"error": error.type} if error else {})},
                             "info" if error is None else "warning")
            # The run's own records carry a call id of their own (or none, when it failed before
            # reaching the approval stage): this links the approval (= MCP task) to how it ended.
            self._spawn(self.pipeline.record_event(
                "approval.executed", approval=aid, agent=a.agent if a else None,
                session=a.session if a else None, status=status,
                capability=a.capability if a else None, call=a.exec_call_id if a else None,
                **({"error": error.type} if error else {})))
            self._spawn(self._notify(aid))

    async def _execute_later(self, aid: str) -> None:
        """Run an approved call nobody is holding any more, through the whole pipeline, once."""
        if not store.set_status(self.db, aid, RUNNING, only_from=APPROVED):
            return
        a = store.get(self.db, aid)
        assert a is not None
        args = json.loads(a.args_json or "{}")
        key = store.key_of(self.db, aid)
        if not store.key_valid(self.db, a.agent, key):
            # The same re-check as the held path (the pipeline repeats it on entry): the key that
            # asked must still be valid. An approval without a recorded key never runs.
            self._finish(aid, FAILED, error=_revoked_error(aid))
            return
        caller = Caller(a.agent, key or b"", a.session, "approval")
        token = _RESUME.set(aid)
        try:
            result = await self.pipeline.invoke(caller, a.capability, args)
        except StockadeError as e:
            self._calls = {k: v for k, v in self._calls.items() if v != aid}
            self._finish(aid, FAILED, error=e)
        except Exception as ex:
            self._finish(aid, FAILED, error=err("Internal", f"approved call failed ({type(ex).__name__})"))
        else:
            self._calls = {k: v for k, v in self._calls.items() if v != aid}
            self._finish(aid, EXECUTED, result=result)
        finally:
            _RESUME.reset(token)

    # -- the owner's decisions ----------------------------------------------------------------
    async def decide(self, aid: str, action: str, *, by: By, reason: str | None = None) -> dict[str, Any]:
        """approve | reject. Idempotent: returns the record and whether this call changed it."""
        if action not in ("approve", "reject"):
            raise err("InvalidInput", "decision must be approve or reject")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise err("InvalidInput", "reason must be a string of at most 1000 characters")
        async with self._decide_lock:
            a = store.get(self.db, aid) if isinstance(aid, str) else None
            if a is None:
                raise err("ApprovalNotFound", f"no approval with id {aid!r}",
                          [{"action": "list", "description": "stockade approvals list shows the queue."}])
            now = self.clock()
            t = transition(a.status, action, now, a.expires_at)
            if t.new_status is not None:
                self._writable()
            if t.new_status == EXPIRED:
                await self.pipeline.record_event("approval.expired", approval=a.id, agent=a.agent,
                                                 capability=a.capability, args_hash=a.args_hash)
                store.set_status(self.db, a.id, EXPIRED, only_from=PENDING, args_json=None, finished_at=now)
                self.bus.publish("approval.expired", {"approval": a.id, "agent": a.agent,
                                                      "capability": a.capability})
            elif t.new_status is not None:
                await self.pipeline.record_event(
                    "approval.decided", approval=a.id, agent=a.agent, session=a.session, capability=a.capability,
                    args_hash=a.args_hash, decision="approved" if action == "approve" else "rejected",
                    by=by, reason=reason, call=a.call_id)
                fields: dict[str, Any] = {"decided_at": now, "decided_by": store.encode_by(by), "reason": reason}
                if t.new_status == REJECTED:
                    fields.update(args_json=None, finished_at=now)
                try:
                    store.set_status(self.db, a.id, t.new_status, only_from=PENDING, **fields)
                except StockadeError as e:   # locked since _writable: the log must not keep a decision that is not
                    await self.pipeline.record_event("approval.decision_failed", approval=a.id, error=e.type)
                    raise
                self.bus.publish("approval.decided", {"approval": a.id, "agent": a.agent, "capability": a.capability,
                                                      "decision": t.new_status, "by": by, "reason": reason})
                if t.new_status == APPROVED and a.id not in self._waiters:
                    self._spawn(self._execute_later(a.id))
            await self._notify(a.id)
            cur = store.get(self.db, aid)
            assert cur is not None
        if t.error:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(cur.expires_at))
            raise err(t.error, f"approval {aid} expired at {when}; nothing was executed", approval=aid)
        return {**cur.public(), "changed": t.new_status not in (None, EXPIRED), "conflict": t.conflict}

    def _writable(self) -> None:
        """Unavailable before anything is audited when another process holds stockade.db's write
        lock: a decision recorded in the log and then not stored would be a lie (issue 23)."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("ROLLBACK")

    async def grant(self, agent: str, capability: str, minutes: float, *, by: By, reason: str | None = None,
                    approval: str | None = None) -> dict[str, Any]:
        """Allow `capability` for `agent` without asking, for `minutes` (audited like any decision)."""
        if not isinstance(minutes, int | float) or isinstance(minutes, bool) or not 0 < minutes <= 7 * 24 * 60:
            raise err("InvalidInput", "minutes must be a number between 0 and 10080 (one week)")
        known = isinstance(agent, str) and self.db.execute("SELECT 1 FROM agents WHERE name=?", (agent,)).fetchone()
        if not known:
            raise err("InvalidInput", f"no agent named {agent!r}")
        if not isinstance(capability, str) or capability not in self.pipeline.registry:
            raise err("InvalidInput", f"no capability named {capability!r}")
        now = self.clock()
        g = store.Grant(store.new_id("grt"), agent, capability, now, now + minutes * 60, store.encode_by(by), reason,
                        approval, None)
        self._writable()
        await self.pipeline.record_event("approval.decided", decision="grant", grant=g.id, agent=agent,
                                         capability=capability, expires=g.expires_at, by=by, reason=reason,
                                         approval=approval)
        store.insert_grant(self.db, g)
        self.bus.publish("approval.decided", {"decision": "grant", "grant": g.id, "agent": agent,
                                              "capability": capability, "expires": g.expires_at, "by": by})
        return g.public()

    async def revoke_grant(self, gid: str, *, by: By) -> dict[str, Any]:
        g = store.get_grant(self.db, gid) if isinstance(gid, str) else None
        if g is None:
            raise err("ApprovalNotFound", f"no grant with id {gid!r}")
        if g.revoked_at is None:
            await self.pipeline.record_event("approval.decided", decision="grant_revoked", grant=g.id,
                                             agent=g.agent, capability=g.capability, by=by)
            store.revoke_grant(self.db, gid, self.clock())
            self.bus.publish("approval.decided", {"decision": "grant_revoked", "grant": g.id, "agent": g.agent,
                                                  "capability": g.capability, "by": by})
        g2 = store.get_grant(self.db, gid)
        assert g2 is not None
        return g2.public()

    async def revoke_agent(self, name: str, *, by: By) -> dict[str, Any]:
        """Revoke an agent: its key, its approvals that have not started and its grants end in one
        transaction; each is audited, and calls it has held end now with `Unauthenticated`."""
        if not isinstance(name, str):
            raise err("InvalidInput", "agent must be a string")
        agents.get(self.db, name)
        async with self._decide_lock:
            ended = agents.revoke_ending(self.db, name)
            approvals, grants = ended.get("approvals", []), ended.get("grants", [])
            await self.pipeline.record_event("agent.revoked", agent=name, by=by, expired_approvals=approvals,
                                             ended_grants=grants)
            for aid in approvals:
                await self.pipeline.record_event("approval.expired", approval=aid, agent=name,
                                                 reason=store.REVOKED_REASON, by=by)
                self.bus.publish("approval.expired", {"approval": aid, "agent": name, "reason": store.REVOKED_REASON})
            for gid in grants:
                await self.pipeline.record_event("approval.decided", decision="grant_revoked", grant=gid, agent=name,
                                                 reason=store.REVOKED_REASON, by=by)
        self.bus.publish("agent.revoked", {"agent": name, "by": by}, "warning")
        for aid in approvals:
            await self._notify(aid)
        return {"name": name, "status": "revoked", "expired_approvals": approvals, "ended_grants": grants}

    async def withdraw(self, agent: str, aid: Any) -> dict[str, Any]:
        """The agent takes back its own request while the owner has not decided (MCP `tasks/cancel`):
        audited, then ended like an expiry (it can never be approved or run). Another agent's id,
        or an unknown one, is ApprovalNotFound; a request already decided is left as it is."""
        async with self._decide_lock:
            a = store.get(self.db, aid) if isinstance(aid, str) and aid else None
            if a is None or a.agent != agent:   # other agents' approvals do not exist for you
                raise err("ApprovalNotFound", f"no approval with id {aid!r}")
            changed = False
            if a.status == PENDING:
                now = self.clock()
                await self.pipeline.record_event("approval.withdrawn", approval=a.id, agent=a.agent,
                                                 session=a.session, capability=a.capability,
                                                 args_hash=a.args_hash, by={"agent": agent}, call=a.call_id)
                changed = store.set_status(self.db, a.id, EXPIRED, only_from=PENDING, args_json=None,
                                           finished_at=now, reason=store.WITHDRAWN_REASON)
                self.bus.publish("approval.expired", {"approval": a.id, "agent": a.agent, "capability": a.capability,
                                                      "reason": store.WITHDRAWN_REASON})
        if changed:
            await self._notify(a.id)
        return {**(await self.status(agent, a.id)), "changed": changed}

    # -- reading -------------------------------------------------------------------------------
    def show(self, aid: str) -> dict[str, Any]:
        a = store.get(self.db, aid) if isinstance(aid, str) else None
        if a is None:
            raise err("ApprovalNotFound", f"no approval with id {aid!r}")
        return {**a.public(), "held": a.id in self._waiters}

    def list(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return [{**a.public(), "held": a.id in self._waiters}
                for a in store.list_(self.db, status=status, limit=limit)]

    def grants(self, live_only: bool = True) -> builtins.list[dict[str, Any]]:
        return [g.public() for g in store.list_grants(self.db, live_only=live_only, now=self.clock())]

    async def status(self, agent: str, aid: Any, wait: Any = 0) -> dict[str, Any]:
        """What the agent sees: its own approvals only; optionally wait until final."""
        if not isinstance(aid, str) or not aid:
            raise err("InvalidInput", "approval must be a non-empty string (the id from ApprovalPending)")
        if wait is None:
            wait = 0
        if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
            raise err("InvalidInput", "wait must be a non-negative number of seconds")
        wait = min(float(wait), self.hold_seconds)

        def current() -> store.Approval:
            a = store.get(self.db, aid)
            if a is None or a.agent != agent:   # other agents' approvals do not exist for you
                raise err("ApprovalNotFound", f"no approval with id {aid!r}")
            return a

        a = current()
        if a.status == PENDING and self.clock() >= a.expires_at:
            await self.sweep(self.clock())
            a = current()
        if wait > 0 and a.status not in FINAL:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            async with self._changed:
                while a.status not in FINAL and (left := deadline - loop.time()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=left)
                    a = current()
        out = a.public(owner=False)
        out["final"] = a.status in FINAL
        return out
