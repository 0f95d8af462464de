"""The real writer on a real filesystem: group commit, recovery, checkpoints, retention, locking."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.audit.helpers import StepClock, call_rec, day_us, frames, make_keys, write_log

from stockade.audit import checkpoint as cp
from stockade.audit import writer as wmod
from stockade.audit.index import Index, read_record
from stockade.audit.verify import verify_dir
from stockade.audit.writer import AuditWriter, Settings, append_locked
from stockade.core.errors import StockadeError
from stockade.core.events import EventBus


def verify(root: Path):  # type: ignore[no-untyped-def]
    return verify_dir(root / "audit", cp.load_public(root / "keys"))


def records(root: Path) -> list[dict]:
    out = []
    for p in sorted((root / "audit").glob("????-??-??.log")):
        data = p.read_bytes()
        for off, ln in frames(p):
            out.append(cbor2.loads(data[off + 4:off + ln]))
    return out


def test_group_commit_shares_fsyncs_and_keeps_call_order(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)

    async def go() -> dict:
        w = AuditWriter(tmp_path / "audit", keys, Settings())
        (tmp_path / "audit").mkdir()
        await w.open()
        seqs = await asyncio.gather(*(w.record(call_rec(i)) for i in range(300)))
        assert seqs == list(range(1, 301))          # seq follows the order of the calls
        stats = dict(w.stats)
        await w.close()
        return stats

    stats = asyncio.run(go())
    assert stats["records"] == 300 and stats["batches"] < 100
    recs = records(tmp_path)
    assert [r["call"] for r in recs] == [f"{i:032x}" for i in range(300)]
    r = verify(tmp_path)
    assert r.ok and r.last_seq == 300 and r.anchored_through == 300     # shutdown checkpoint


def test_record_returns_after_the_bytes_are_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings())
        await w.open()
        for i in range(5):
            seq = await w.record(call_rec(i))
            assert records(tmp_path)[-1]["seq"] == seq
        await w.close()

    asyncio.run(go())


def test_day_rollover_chains_across_files(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    clock = StepClock(day_us("2026-03-01", 86400 - 0.0035))

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings(), clock=clock)
        await w.open()
        for i in range(8):
            await w.record(call_rec(i))
        clock.now = day_us("2026-03-01", 5)            # the clock steps back over midnight
        await w.record(call_rec(99))
        await w.close()

    asyncio.run(go())
    names = sorted(p.name for p in (tmp_path / "audit").glob("????-??-??.log"))
    assert names == ["2026-03-01.log", "2026-03-02.log"]
    d2 = (tmp_path / "audit" / "2026-03-02.log").read_bytes()
    first = cbor2.loads(d2[4:4 + int.from_bytes(d2[:4], "big")])
    last_d1 = [r for r in records(tmp_path) if r["seq"] == first["seq"] - 1][0]
    assert first["prev"] == last_d1["hash"]
    assert records(tmp_path)[-1]["call"] == f"{99:032x}"   # written to the newer file, never an older one
    assert verify(tmp_path).ok


def test_torn_tail_is_moved_aside_and_the_chain_continues(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    write_log(tmp_path / "audit", keys, days=("2026-01-01",), per_day=5)
    path = tmp_path / "audit" / "2026-01-01.log"
    good = path.read_bytes()
    (off, ln) = frames(path)[-1]
    path.write_bytes(good + good[off:off + ln // 2])     # a crash in the middle of a record write
    assert verify(tmp_path).findings[0].cause == "torn"
    bus = EventBus()

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", keys, Settings(), bus=bus, clock=StepClock(day_us("2026-01-01", 7200)))
        await w.open()
        await w.record(call_rec(6))
        await w.close()

    asyncio.run(go())
    torn = list((tmp_path / "audit" / "torn").iterdir())
    assert len(torn) == 1 and torn[0].read_bytes() == good[off:off + ln // 2]
    recs = records(tmp_path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6, 7]
    assert recs[5]["kind"] == "audit.torn_recovered" and recs[5]["bytes"] == ln // 2
    assert any(e.kind == "audit.torn_recovered" for e in bus.history)
    r = verify(tmp_path)
    assert r.ok and any("torn" in n for n in r.notes)


def test_garbage_tail_is_not_mistaken_for_a_torn_write(tmp_path: Path) -> None:
    write_log(tmp_path / "audit", None, days=("2026-01-01",), per_day=3)
    path = tmp_path / "audit" / "2026-01-01.log"
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\x10this is not cbor")

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings())
        await w.open()

    with pytest.raises(StockadeError, match="damaged"):
        asyncio.run(go())
    assert path.stat().st_size == size + 20          # evidence left in place
    assert wmod.try_lock(tmp_path / "audit") is not None   # and the lock was released


def test_fsync_error_is_fatal_and_calls_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection at the syscall boundary: fdatasync reports EIO once."""
    (tmp_path / "audit").mkdir()
    bus = EventBus()
    health: dict = {}
    real = os.fdatasync
    fail = {"on": False}

    def fdatasync(fd: int) -> None:
        if fail["on"]:
            fail["on"] = False
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(wmod.os, "fdatasync", fdatasync)

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings(), bus=bus, health=health)
        await w.open()
        await w.record(call_rec(1))
        fail["on"] = True
        with pytest.raises(StockadeError) as e:
            await w.record(call_rec(2))
        assert e.value.type == "Internal" and e.value.data["audit"] == "failed"
        # the next fsync would succeed, but the writer never trusts the file again
        with pytest.raises(StockadeError):
            await w.record(call_rec(3))
        assert health["audit"]["status"] == "critical"
        await w.close()

    asyncio.run(go())
    assert any(e.kind == "health.audit" and e.severity == "critical" for e in bus.history)


def test_periodic_and_shutdown_checkpoints(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    (tmp_path / "audit").mkdir()

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", keys, Settings(checkpoint_every=5))
        await w.open()
        for i in range(12):
            await w.record(call_rec(i))
        await w.close()

    asyncio.run(go())
    cps = cp.read_log(tmp_path / "audit" / cp.LOG_NAME)
    assert [(c["seq"], c["reason"]) for c in cps] == [(5, "periodic"), (10, "periodic"), (12, "shutdown")]
    pub = cp.load_public(keys)
    for c in cps:
        cp.check(c, pub)
    assert verify(tmp_path).anchored_through == 12


def test_retention_prunes_with_a_signed_anchor(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    write_log(tmp_path / "audit", keys, days=("2026-01-01", "2026-01-02", "2026-01-10"), per_day=4)

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", keys, Settings(retention_days=5),
                        clock=StepClock(day_us("2026-01-10", 7200)))
        await w.open()
        await asyncio.sleep(0.2)            # the retention task runs at start
        await w.record(call_rec(100))
        await w.close()

    asyncio.run(go())
    assert sorted(p.name for p in (tmp_path / "audit").glob("????-??-??.log")) == ["2026-01-10.log"]
    prunes = [c for c in cp.read_log(tmp_path / "audit" / cp.LOG_NAME) if c["reason"] == "prune"]
    assert [(c["seq"], c["file"]) for c in prunes] == [(4, "2026-01-01.log"), (8, "2026-01-02.log")]
    r = verify(tmp_path)
    assert r.ok and r.start == "checkpoint" and r.first_seq == 9
    (tmp_path / "audit" / cp.LOG_NAME).unlink()            # without the anchor the gap is visible
    assert verify(tmp_path).findings[0].cause == "start_unanchored"


def test_one_writer_per_log(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings())
        await w.open()
        await w.record(call_rec(1))
        other = AuditWriter(tmp_path / "audit", None, Settings())
        with pytest.raises(StockadeError, match="another process"):
            await other.open(lock_timeout=0.3)
        assert wmod.try_lock(tmp_path / "audit") is None       # offline writers must wait too
        await w.close()
        assert append_locked(tmp_path / "audit", None, {"kind": "agent.created", "agent": "x"}) == 2

    asyncio.run(go())
    assert verify(tmp_path).ok


def test_index_query_and_rebuild(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings())
        await w.open()
        for i in range(10):
            rec = call_rec(i, agent="bob" if i % 2 else "alice")
            if i == 3:
                rec["outcome"] = {"status": "error", "error": "PathDenied"}
            await w.record(rec)
        await w.record({"kind": "policy.reloaded", "files": 2})
        await w.close()

    asyncio.run(go())
    idx = Index(tmp_path / "audit")
    bob = idx.query(agent="bob")
    assert len(bob) == 5
    errs = [read_record(tmp_path / "audit", *h) for h in idx.query(outcome="error")]
    assert [(r["seq"], r["outcome"]["error"]) for r in errs] == [(4, "PathDenied")]
    assert len(idx.query(kind="policy.reloaded")) == 1
    before = idx.conn.execute("SELECT * FROM records ORDER BY seq").fetchall()
    idx.conn.execute("DELETE FROM records WHERE seq > 3")
    assert idx.catch_up() == 8
    assert idx.rebuild() == 11
    assert idx.conn.execute("SELECT * FROM records ORDER BY seq").fetchall() == before
    idx.close()


def test_admin_shape_records_roundtrip_as_json(tmp_path: Path) -> None:
    """What travels over the admin socket is JSON: the record must survive it unchanged."""
    rec = {"kind": "vault.unsealed", "by": "owner", "n": 3, "nested": {"b": [1, 2], "a": None}}
    (tmp_path / "audit").mkdir()
    assert append_locked(tmp_path / "audit", None, json.loads(json.dumps(rec))) == 1
    got = records(tmp_path)[0]
    assert {k: got[k] for k in rec} == rec


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("small")
    write_log(root / "audit", None, days=("2026-01-01",), per_day=3)
    return (root / "audit" / "2026-01-01.log").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=300), cut=st.integers(0, 400))
def test_recovery_never_crashes_and_never_hides_tampering(small_log: bytes, tail: bytes, cut: int,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any bytes after (or instead of part of) the last record: either a torn write recovered to a
    valid chain, or AuditDamaged; never an exception, never a silently accepted change."""
    audit = tmp_path_factory.mktemp("rec") / "audit"
    audit.mkdir()
    data = small_log[:max(len(small_log) - cut, 0)] + tail
    (audit / "2026-01-01.log").write_bytes(data)
    try:
        head, torn = wmod.Store(audit).recover()
    except wmod.AuditDamaged:
        return
    kept = (audit / "2026-01-01.log").read_bytes()
    assert data.startswith(kept)
    if torn:
        assert (audit / torn["moved_to"]).read_bytes() == data[len(kept):]
    assert verify_dir(audit, None).ok
    assert head.size == len(kept)


def test_a_damaged_index_never_blocks_the_log(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    append_locked(tmp_path / "audit", None, {"kind": "x"})
    (tmp_path / "audit" / "index.db").write_bytes(b"this is not a database" * 100)
    for side in ("index.db-wal", "index.db-shm"):
        (tmp_path / "audit" / side).unlink(missing_ok=True)

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", None, Settings())
        await w.open()
        await w.record(call_rec(1))
        await w.close()

    asyncio.run(go())
    idx = Index(tmp_path / "audit")
    assert [r[0] for r in idx.conn.execute("SELECT seq FROM records ORDER BY seq")] == [1, 2]
    idx.close()
    assert any(p.name.startswith("index.db.damaged-") for p in (tmp_path / "audit").iterdir())
