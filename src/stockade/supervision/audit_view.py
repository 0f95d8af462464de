"""The dashboard's read-only view of the audit part (query through its index, verify the chain).

Reads `gw.audit` (the audit writer): when the audit part is not running the
dashboard says "audit not available" instead of failing. Work runs in a thread (file reads,
SQLite, hashing) so the event loop keeps serving calls.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from stockade.audit import checkpoint as cp
from stockade.audit.index import Index, read_record
from stockade.audit.record import jsonable
from stockade.audit.verify import verify_dir
from stockade.core.errors import err
from stockade.core.wiring import Gateway


def available(gw: Gateway) -> bool:
    return gw.audit is not None


def _time_us(v: str | None, name: str) -> int | None:
    if not v:
        return None
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise err("InvalidInput", f"{name}: expected a date or ISO time (UTC)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1_000_000)


async def query(gw: Gateway, filters: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Matching records (the index caught up first), newest first, and a message for every frame
    that could not be decoded.

    An undecodable frame (one the indexer met, or an indexed record no longer readable) is never
    skipped in silence: a hostile record that the reader cannot decode would otherwise hide
    itself from the owner's view, so each one is named with where it is and what to run."""
    audit_dir = gw.home.audit_dir
    kw: dict[str, Any] = {"agent": filters.get("agent"), "capability": filters.get("capability"),
          "kind": filters.get("kind"),
          "since_us": _time_us(filters.get("since"), "since"), "until_us": _time_us(filters.get("until"), "until"),
          "limit": int(filters.get("limit", 100)), "newest_first": True}

    def work() -> tuple[list[dict[str, Any]], list[str]]:
        idx = Index(audit_dir)
        try:
            # the writer's index thread trails the log by design; like `audit query` and the
            # session view, the page first indexes what is already on disk, so a call the owner
            # just saw in the activity feed is never missing from the log's own page
            idx.catch_up()
            hits = idx.query(**kw)
            bad = [b.message() for b in idx.undecodable()]
        finally:
            idx.close()
        recs: list[dict[str, Any]] = []
        for file, offset, length in hits:
            r = read_record(audit_dir, file, offset, length)
            if r is None:
                bad.append(f"{file} offset {offset}: an indexed record can no longer be read; "
                           "run `stockade audit verify`")
            else:
                recs.append(jsonable(r))
        return recs, bad

    return await asyncio.get_running_loop().run_in_executor(None, work)


async def session(gw: Gateway, session_id: str) -> dict[str, Any]:
    """One session's calls in order (decision, approval, outcome, duration): `audit.session.timeline`."""
    from stockade.audit import session as sess

    if not session_id or len(session_id) > 200:
        raise err("InvalidInput", "session: 1 to 200 characters")
    audit_dir = gw.home.audit_dir

    def work() -> dict[str, Any]:
        idx = Index(audit_dir)
        try:
            idx.catch_up()
            recs, bad = sess.load(idx, audit_dir, session_id, limit=10_000)
        finally:
            idx.close()
        return {"session": session_id, "calls": sess.timeline(recs), "undecodable": [b.message() for b in bad]}

    return await asyncio.get_running_loop().run_in_executor(None, work)


async def verify(gw: Gateway) -> dict[str, Any]:
    w = gw.audit
    if w is None:
        raise err("Internal", "the audit writer is not running")
    limit = (w.durable.file, int(w.durable.size)) if w.durable.file else None

    def work() -> dict[str, Any]:
        return verify_dir(gw.home.audit_dir, cp.load_public(gw.home.keys), limit=limit).to_dict()

    return await asyncio.get_running_loop().run_in_executor(None, work)
