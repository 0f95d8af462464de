"""Shared helpers for the audit tests: build real logs with the real writer."""

from __future__ import annotations

import asyncio
import calendar
import time
from pathlib import Path
from typing import Any

from stockade.audit import checkpoint as cp
from stockade.audit.writer import AuditWriter, Settings


def day_us(day: str, offset_s: float = 0.0) -> int:
    return int((calendar.timegm(time.strptime(day, "%Y-%m-%d")) + offset_s) * 1_000_000)


class StepClock:
    """A clock the tests move by hand (µs)."""

    def __init__(self, start_us: int):
        self.now = start_us

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def call_rec(i: int, agent: str = "alice") -> dict[str, Any]:
    return {"agent": agent, "session": "rpc", "capability": "fs.read", "call": f"{i:032x}", "phase": "complete",
            "args": {"path": f"/workspace/file-{i}.txt", "n": i}, "decision": {"tier": "autonomous", "rule": "ws",
            "layer": "agent"}, "outcome": {"status": "ok"}, "duration_us": 100 + i}


def make_keys(root: Path) -> Path:
    keys = root / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    cp.create_keys(keys)
    return keys


def write_log(audit_dir: Path, keys: Path | None, days: tuple[str, ...] = ("2026-01-01", "2026-01-02", "2026-01-03"),
              per_day: int = 8, checkpoint_every: int = 1000, shutdown_checkpoint: bool = False) -> None:
    """A multi-day log written by the real AuditWriter (clock set per day)."""
    audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    clock = StepClock(day_us(days[0], 3600))

    async def go() -> None:
        w = AuditWriter(audit_dir, keys, Settings(checkpoint_every=checkpoint_every, retention_days=100_000),
                        clock=clock)
        await w.open()
        i = 0
        for d in days:
            clock.now = day_us(d, 3600)
            for _ in range(per_day):
                i += 1
                await w.record(call_rec(i))
        if not shutdown_checkpoint:
            w._key = None   # no shutdown checkpoint: tests decide what is anchored
        await w.close()

    asyncio.run(go())


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, total frame length) of each frame of a day file."""
    data = path.read_bytes()
    out, o = [], 0
    while o + 4 <= len(data):
        n = int.from_bytes(data[o:o + 4], "big")
        out.append((o, 4 + n))
        o += 4 + n
    return out
