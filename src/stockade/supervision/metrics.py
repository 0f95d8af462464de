"""Prometheus metrics for `/metrics` on the dashboard port (admin token required).

Fed without touching the parts: every call's final record and stage latencies come from the
pipeline's `observers` hook; approvals decided, auth bursts and other events from the event bus
(`follow`); the rest (part health, pending approvals, audit head, sandbox) is read from
`pipeline.health`, the database and the audit writer at scrape time. One registry per gateway,
never prometheus-client's global one (two gateways in one process must not mix).

Labels are bounded: capability names come from the registry (a call naming an unknown capability
is counted as `(unknown)`), tiers and outcomes from fixed sets (an error type is an ErrorType
name), stages from `pipeline.STAGES`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stockade.core.errors import ErrorType
from stockade.core.types import TIERS
from stockade.core.wiring import Gateway
from stockade.supervision.status import audit_head, overall, pending_approvals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = frozenset({"ok"} | {t.value for t in ErrorType})
REFUSED = frozenset({"InvalidInput", "CapabilityNotFound", "PolicyDenied", "RateLimited", "Unauthenticated"})
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
HEALTH = ("ok", "degraded", "critical")
# Bus events counted as they happen (kind -> label); everything else is ignored.
EVENTS = ("approval.requested", "approval.decided", "approval.expired", "approval.executed", "auth.burst",
          "policy.reloaded", "policy.rejected", "config.reloaded", "config.rejected", "vault.sealed",
          "vault.unsealed", "egress.error", "egress.repaired", "agent.revoked", "audit.budget_exceeded")


def call_labels(rec: dict[str, Any], known: Callable[[str], bool]) -> tuple[str, str, str]:
    """(capability, tier, outcome) of a call's final audit record, each from a bounded set. Pure."""
    cap = rec.get("capability")
    capability = cap if isinstance(cap, str) and known(cap) else "(unknown)"
    decision = rec.get("decision") or {}
    tier = decision.get("tier") if isinstance(decision, dict) else None
    out = rec.get("outcome") or {}
    outcome = out.get("error") or out.get("status") if isinstance(out, dict) else None
    return (capability, tier if tier in TIERS else "none",
            outcome if outcome in OUTCOMES else "other")


class Metrics(Collector):
    """The gateway's metrics: counters fed as things happen, gauges read at scrape time."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.calls = Counter("stockade_calls", "Calls that ended, by capability, tier and outcome "
                             "(an error type, or ok)", ["capability", "tier", "outcome"], registry=r)
        self.refused = Counter("stockade_calls_refused", "Calls refused before they ran (invalid, unknown, "
                               "denied by policy, rate limited), by reason", ["reason"], registry=r)
        self.egress_denied = Counter("stockade_egress_denied", "Calls whose network connection the egress "
                                     "allowlist refused, by capability", ["capability"], registry=r)
        self.stage = Histogram("stockade_stage_seconds", "Time a call spent in each pipeline stage "
                               "(approval includes the owner's wait)", ["stage"], buckets=BUCKETS, registry=r)
        self.duration = Histogram("stockade_call_seconds", "Whole call, first stage to audit record",
                                  buckets=BUCKETS, registry=r)
        self.events = Counter("stockade_events", "Supervision events by kind (approvals decided, "
                              "auth bursts, reloads, vault seal/unseal, egress errors)", ["kind"], registry=r)
        self.approvals_decided = Counter("stockade_approvals_decided", "Approvals decided, by decision",
                                         ["decision"], registry=r)
        r.register(self)

    # -- feeds -----------------------------------------------------------------------------------
    def observe_call(self, rec: dict[str, Any], stages: dict[str, float]) -> None:
        capability, tier, outcome = call_labels(rec, self.gw.pipeline.registry.__contains__)
        self.calls.labels(capability, tier, outcome).inc()
        if outcome in REFUSED:
            self.refused.labels(outcome).inc()
        if outcome == "EgressDenied":
            self.egress_denied.labels(capability).inc()
        for stage, seconds in stages.items():
            self.stage.labels(stage).observe(seconds)
        self.duration.observe(sum(stages.values()))

    def observe_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in EVENTS:
            return
        self.events.labels(kind).inc()
        if kind == "approval.decided":
            decision = data.get("decision")
            self.approvals_decided.labels(decision if decision in ("approve", "reject", "grant", "grant_revoked")
                                          else "other").inc()
        elif kind == "approval.expired":
            self.approvals_decided.labels("expired").inc()

    async def follow(self) -> None:
        """Count bus events until the gateway stops (a slow scrape never blocks a producer)."""
        sub = self.gw.bus.subscribe(maxsize=10_000)
        try:
            while not (self.gw.stopping is not None and self.gw.stopping.is_set()):
                ev = await sub.get(timeout=1.0)
                if ev is not None:
                    self.observe_event(ev.kind, ev.data if isinstance(ev.data, dict) else {})
        except asyncio.CancelledError:
            pass
        finally:
            sub.close()

    def start(self) -> None:
        self.gw.pipeline.observers.append(self.observe_call)
        self.gw.tasks.append(asyncio.create_task(self.follow(), name="metrics-events"))

    # -- scrape-time gauges ------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        health = {k: v for k, v in self.gw.pipeline.health.items() if isinstance(v, dict)}
        up = GaugeMetricFamily("stockade_part_health", "1 for the part's current status (ok, degraded, critical)",
                               labels=["part", "status"])
        for part, h in sorted(health.items()):
            for status in HEALTH:
                up.add_metric([part, status], 1.0 if h.get("status", "ok") == status else 0.0)
        yield up
        yield GaugeMetricFamily("stockade_healthy", "1 when every part is ok",
                                value=1.0 if overall(health) == "ok" else 0.0)
        yield GaugeMetricFamily("stockade_start_time_seconds", "When this gateway started (unix time)",
                                value=self.gw.pipeline.started)
        pending = pending_approvals(self.gw)
        if pending is not None:
            yield GaugeMetricFamily("stockade_approvals_pending", "Approvals waiting for the owner", value=pending)
        yield from self._audit()
        yield from self._sandbox(health.get("sandbox"))
        vault = health.get("vault")
        if vault is not None:
            yield GaugeMetricFamily("stockade_vault_sealed", "1 when the vault is sealed",
                                    value=1.0 if vault.get("sealed") else 0.0)

    def _audit(self) -> Iterator[Metric]:
        head = audit_head(self.gw)
        if head is None or self.gw.audit is None:
            return
        st = self.gw.audit.status()
        yield GaugeMetricFamily("stockade_audit_head_seq", "Sequence number of the last durable audit record",
                                value=head["seq"] or 0)
        yield GaugeMetricFamily("stockade_audit_checkpoint_seq", "Sequence number of the last signed checkpoint",
                                value=head["last_checkpoint_seq"] or 0)
        yield GaugeMetricFamily("stockade_audit_records_written", "Audit records written since start",
                                value=st.get("records", 0))
        yield GaugeMetricFamily("stockade_audit_bytes", "Bytes of the audit directory (day files, index, "
                                "checkpoints)", value=_dir_bytes(self.gw.home.audit_dir))
        yield GaugeMetricFamily("stockade_audit_failed", "1 when the audit log refuses writes (calls are refused)",
                                value=1.0 if st.get("failed") or st.get("disk_full") else 0.0)

    def _sandbox(self, sandbox: dict[str, Any] | None) -> Iterator[Metric]:
        if not sandbox:
            return
        yield GaugeMetricFamily("stockade_sandbox_zygote_up", "1 when the sandbox zygote is running",
                                value=1.0 if sandbox.get("zygote_pid") else 0.0)
        yield GaugeMetricFamily("stockade_sandbox_zygote_restarts", "Zygote restarts since start",
                                value=sandbox.get("zygote_restarts") or 0)
        yield GaugeMetricFamily("stockade_sandbox_zygote_stalls", "Zygote stalls since start",
                                value=sandbox.get("zygote_stalls") or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _dir_bytes(path: os.PathLike[str]) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
    return total
