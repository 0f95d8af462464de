"""Per-agent audit byte budget: a sliding window of bytes written per agent, one owner alert."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.audit.helpers import call_rec

from stockade.audit.budget import ByteBudget
from stockade.audit.index import iter_records
from stockade.audit.verify import day_files, verify_dir
from stockade.audit.writer import AuditWriter, Settings
from stockade.core.events import EventBus


def test_window_counts_per_agent_and_forgets_old_bytes() -> None:
    b = ByteBudget(limit=1000, window=60.0)
    assert b.add("m", 600, now=0.0) is False
    assert b.over("m", now=1.0) is None
    assert b.add("m", 600, now=2.0) is True          # crossed: the caller alerts once
    assert b.add("m", 600, now=3.0) is False         # still over, no second alert in this window
    wait = b.over("m", now=3.0)
    assert wait is not None and 0 < wait <= 66.0      # at most one bucket late
    assert b.over("other", now=3.0) is None
    # Once the old bytes leave the window the agent is under budget again.
    assert b.over("m", now=3.0 + wait + 0.01) is None
    assert b.add("m", 2000, now=200.0) is True       # a new window: a new alert


def test_retry_after_is_when_enough_bytes_expire() -> None:
    b = ByteBudget(limit=1000, window=10.0)
    b.add("m", 900, now=0.0)
    b.add("m", 900, now=5.0)
    wait = b.over("m", now=5.0)
    # The first 900 bytes leave the window at t=10 (bucketed: never earlier than that).
    assert wait is not None and 5.0 <= wait <= 6.1


def test_writer_alerts_once_and_records_the_breach(tmp_path: Path) -> None:
    bus = EventBus()
    audit = tmp_path / "audit"
    audit.mkdir()

    async def go() -> tuple[float | None, float | None]:
        w = AuditWriter(audit, None, Settings(agent_budget_bytes=3000, agent_budget_seconds=60.0), bus=bus)
        await w.open()
        for i in range(40):
            await w.record(call_rec(i, agent="mallory"))
        await w.record(call_rec(99, agent="alice"))
        out = (w.agent_over_budget("mallory"), w.agent_over_budget("alice"))
        await w.close()
        return out

    mallory, alice = asyncio.run(go())
    assert mallory is not None and 0 < mallory <= 66.0
    assert alice is None
    alerts = [e for e in bus.history if e.kind == "audit.budget_exceeded"]
    assert len(alerts) == 1 and alerts[0].severity == "critical" and alerts[0].data["agent"] == "mallory"
    recs = [r for p in day_files(audit) for _o, _l, r in iter_records(p)]
    breach = [r for r in recs if r.get("kind") == "audit.budget_exceeded"]
    assert len(breach) == 1 and breach[0]["agent"] == "mallory" and breach[0]["budget_bytes"] == 3000
    assert verify_dir(audit, None).ok
