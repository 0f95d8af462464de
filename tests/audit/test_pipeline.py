"""The pipelined group commit writes exactly the log the straightforward path writes.

The writer starts a batch's write + fdatasync while callers are still queueing records (and
merges the callers it just acknowledged into the next batch otherwise). Whatever the batching,
the day files must be byte for byte what `append_locked` (one record, one write, one fdatasync,
no queue) writes for the same records at the same times, across a day boundary, with records
that take every encoding path (the one-pass fast path, normalized values, stand-ins).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import cbor2
import pytest
from tests.audit.helpers import day_us, frames

from stockade.audit.verify import verify_dir
from stockade.audit.writer import AuditWriter, Settings, append_locked


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 7)
    if kind == 0:
        return rng.randrange(-(1 << 70), 1 << 70)          # beyond 64 bits: a stand-in
    if kind == 1:
        return rng.randrange(-300, 70_000)
    if kind == 2:
        return rng.choice([1.5, -0.0, 1e300, float("nan"), 2.5e-8])   # floats: the normalizing path
    if kind == 3:
        return "".join(rng.choice("abc/é\u2603 \"\\") for _ in range(rng.randrange(40)))
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return rng.randbytes(rng.randrange(40))
    if kind == 6:
        return "x" * rng.randrange(300)
    if kind in (7, 8):
        return {rng.choice(["path", "n", "mode", "z", "aa", "ü", "content"]) + str(i): _value(rng, depth + 1)
                for i in range(rng.randrange(5))}
    if kind == 9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 10:
        deep: Any = "end"
        for _ in range(rng.choice([5, 120])):              # 120 levels: past MAX_RECORD_DEPTH
            deep = [deep]
        return deep
    return {1: "int key", "1": "text key"}                  # keys colliding once made text


def _records(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"agent": f"agent-{i % 3}", "session": "s", "capability": "fs.read",
                               "call": f"{i:032x}", "phase": "complete", "decision": {"tier": "autonomous"},
                               "outcome": {"status": "ok"}, "duration_us": i}
        if rng.random() < 0.6:
            rec["args"] = _value(rng)
        if rng.random() < 0.1:
            rec = {"kind": "agent.created", "name": _value(rng), "seq": 99, "hash": b"caller"}  # chain keys ignored
        out.append(rec)
    return out


class ListClock:
    """Timestamps the test fixes in advance: one per record, crossing midnight half way."""

    def __init__(self, times: list[int]):
        self.times = list(times)
        self.i = 0

    def __call__(self) -> int:
        t = self.times[min(self.i, len(self.times) - 1)]
        self.i += 1
        return t


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pipelined_writer_writes_the_bytes_the_one_at_a_time_path_writes(tmp_path: Path, seed: int) -> None:
    n, writers = 240, 24
    recs = _records(seed, n)
    start = day_us("2026-03-01", 86_400 - 0.05)               # 50 ms before midnight
    times = [start + i * 400 for i in range(n)]               # the clock crosses into 2026-03-02
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()

    async def go() -> tuple[dict[int, dict[str, Any]], dict[str, int]]:
        w = AuditWriter(fast, None, Settings(checkpoint_every=7), clock=ListClock(times))
        await w.open()
        by_seq: dict[int, dict[str, Any]] = {}
        todo = list(enumerate(recs))

        async def one() -> None:
            while todo:
                _i, rec = todo.pop(0)
                by_seq[await w.record(rec)] = rec
                if rec.get("duration_us", 0) % 5 == 0:
                    await asyncio.sleep(0)                    # callers that come back late

        await asyncio.gather(*(one() for _ in range(writers)))
        stats = dict(w.stats)
        await w.close()
        return by_seq, stats

    by_seq, stats = asyncio.run(go())
    assert sorted(by_seq) == list(range(1, n + 1))
    assert 1 < stats["batches"] < n                            # records did share fdatasyncs

    seq_ts = {}
    for p in sorted(fast.glob("????-??-??.log")):
        data = p.read_bytes()
        for off, ln in frames(p):
            r = cbor2.loads(data[off + 4:off + ln])
            seq_ts[r["seq"]] = r["ts"]
    for seq in range(1, n + 1):
        assert append_locked(slow, None, by_seq[seq], clock=lambda s=seq: seq_ts[s]) == seq

    names = sorted(p.name for p in fast.glob("????-??-??.log"))
    assert names == ["2026-03-01.log", "2026-03-02.log"]
    assert names == sorted(p.name for p in slow.glob("????-??-??.log"))
    for name in names:
        assert (fast / name).read_bytes() == (slow / name).read_bytes(), name
    r = verify_dir(fast, None)
    assert r.ok and r.records == n, r.findings
