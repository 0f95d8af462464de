"""One session's calls, in order: what an agent did, as the owner reads it (pure).

A call can span several records: `decision` (intent, before a side effect) then `outcome`, or one
`complete`; an approval adds `approval.requested`, `approval.decided` / `approval.expired` (or
`approval.grant_used`) records naming the call (`call`) or the approval id. `timeline` folds them
into one entry per call, ordered by the call's first record; records of the session that are not
calls (a request refused at the edge, ...) are entries of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stockade.audit.index import BadFrame, Index, read_record
from stockade.audit.record import jsonable

MAX_RECORDS = 100_000


def _seq(rec: dict[str, Any]) -> int:
    s = rec.get("seq")
    return s if type(s) is int else 0


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries in order: {call, seq, ts, agent, capability, args, decision, approval, outcome, duration_us, seqs}."""
    entries: list[dict[str, Any]] = []
    by_call: dict[str, dict[str, Any]] = {}
    by_approval: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=_seq):
        kind = rec.get("kind")
        call = rec.get("call") if isinstance(rec.get("call"), str) else None
        aid = rec.get("approval") if isinstance(rec.get("approval"), str) else None
        e = by_call.get(call) if call else by_approval.get(aid) if aid else None
        if e is None:
            if kind is not None and not str(kind).startswith("approval."):
                entries.append({"seq": rec.get("seq"), "ts": rec.get("ts"), "kind": kind, "agent": rec.get("agent"),
                                "record": jsonable(rec), "seqs": [rec.get("seq")]})
                continue
            e = {"call": call, "seq": rec.get("seq"), "ts": rec.get("ts"), "agent": rec.get("agent"),
                 "capability": rec.get("capability"), "args": None, "decision": None, "approval": None,
                 "outcome": None, "duration_us": None, "seqs": []}
            entries.append(e)
            if call:
                by_call[call] = e
        e["seqs"].append(rec.get("seq"))
        if aid:
            by_approval[aid] = e
        if kind is None:
            _call_record(e, rec)
        else:
            _approval_record(e, str(kind), rec)
    return entries


def _call_record(e: dict[str, Any], rec: dict[str, Any]) -> None:
    e["capability"] = e["capability"] or rec.get("capability")
    if e["args"] is None:
        e["args"] = jsonable(rec.get("args"))
    d = _d(rec.get("decision"))
    if d and (e["decision"] is None or d.get("tier") is not None):
        e["decision"] = {k: d.get(k) for k in ("tier", "rule", "layer", "policy") if d.get(k) is not None}
    o = _d(rec.get("outcome"))
    if o and (e["outcome"] is None or o.get("status") != "started"):
        e["outcome"] = {k: v for k, v in o.items() if k in ("status", "error")}
        if isinstance(o.get("approval"), str) and e["approval"] is None:
            e["approval"] = {"id": o["approval"], "status": "pending"}
    if type(rec.get("duration_us")) is int and (rec.get("phase") != "decision" or e["duration_us"] is None):
        e["duration_us"] = rec["duration_us"]     # the outcome's duration covers the whole call


def _approval_record(e: dict[str, Any], kind: str, rec: dict[str, Any]) -> None:
    a = e["approval"] or {}
    if isinstance(rec.get("approval"), str):
        a["id"] = rec["approval"]
    if kind == "approval.requested":
        a.setdefault("status", "pending")
        a["requested_seq"] = rec.get("seq")
        e["capability"] = e["capability"] or rec.get("capability")
    elif kind == "approval.decided":
        a["status"] = rec.get("decision") if isinstance(rec.get("decision"), str) else "decided"
        if rec.get("by") is not None:
            a["by"] = jsonable(rec.get("by"))
        if rec.get("reason"):
            a["reason"] = rec.get("reason")
    elif kind == "approval.expired":
        a["status"] = "expired"
    elif kind == "approval.grant_used":
        a["status"] = "grant"
        if isinstance(rec.get("grant"), str):
            a["grant"] = rec["grant"]
    e["approval"] = a


def load(idx: Index, audit_dir: Path, session: str,
         limit: int = MAX_RECORDS) -> tuple[list[dict[str, Any]], list[BadFrame]]:
    """The records of `session` (through an index that is caught up), plus the `approval.expired`
    records of its approvals (they name the approval, not the session); frames that no longer decode."""
    bad: list[BadFrame] = []
    recs = _read(audit_dir, idx.query(session=session, limit=limit), bad)
    pending = {r["approval"]: r.get("agent") for r in recs
               if r.get("kind") == "approval.requested" and isinstance(r.get("approval"), str)}
    for agent in {a for a in pending.values() if isinstance(a, str)}:
        for r in _read(audit_dir, idx.query(kind="approval.expired", agent=agent, limit=limit), bad):
            if r.get("approval") in pending:
                recs.append(r)
    return recs, bad


def _read(audit_dir: Path, hits: list[tuple[str, int, int]], bad: list[BadFrame]) -> list[dict[str, Any]]:
    out = []
    for h in hits:
        r = read_record(audit_dir, *h)
        if r is None:
            bad.append(BadFrame(h[0], h[1], h[2], "the index points at it but it does not decode", None))
        else:
            out.append(r)
    return out
