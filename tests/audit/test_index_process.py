"""The index is kept by a child process tailing the day files (index.py, IndexProcess).

Its failures never touch the log or the calls, it never indexes past the durable end, it is
restarted and catches up after a kill, it stops with the writer, and its lag is reported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.audit.helpers import call_rec, write_log

from stockade.audit.index import Index, apply_messages, iter_records, parse_lines
from stockade.audit.writer import AuditWriter, Settings, append_locked


async def _until(cond: object, seconds: float = 60.0) -> None:
    """Poll (a bound for a hung run, not a timing assertion)."""
    for _ in range(int(seconds / 0.05)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


def _seqs(audit: Path) -> list[int]:
    idx = Index(audit)
    try:
        return [r[0] for r in idx.conn.execute("SELECT seq FROM records ORDER BY seq")]
    finally:
        idx.close()


def test_messages_fold_into_the_newest_durable_end() -> None:
    msgs, rest = parse_lines(b"H 3 2026-01-01.log 120\nP 2025-01-01.log 7\nH 9 2026-01-02.log 40\nH 10 2026-")
    assert rest == b"H 10 2026-"
    prunes: list[tuple[str, int]] = []
    assert apply_messages(msgs, None, prunes) == ("2026-01-02.log", 40)
    assert prunes == [("2025-01-01.log", 7)]
    assert apply_messages([["H", "x"], ["H", "1", "f", "-3"], ["Z"]], ("f", 1), prunes) == ("f", 1)


def test_catch_up_never_reads_past_the_limit(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    for i in range(6):
        append_locked(audit, None, call_rec(i))
    (Path(audit / "index.db")).unlink()
    log = next(audit.glob("*.log"))
    ends = [o + 4 + n for o, n, _ in iter_records(log)]
    idx = Index(audit)
    assert idx.catch_up((log.name, ends[2])) == 3
    assert idx.catch_up((log.name, ends[2] + 5)) == 0          # a partial frame past it: not yet
    assert idx.catch_up((log.name, ends[5])) == 3
    idx.close()
    assert _seqs(audit) == [1, 2, 3, 4, 5, 6]


def test_every_record_is_indexed_by_the_process_and_its_lag_reported(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    health: dict[str, object] = {}

    async def go() -> int:
        w = AuditWriter(audit, None, Settings(), health=health)
        await w.open()
        await asyncio.gather(*(w.record(call_rec(i, agent=f"a{i % 3}")) for i in range(500)))
        await _until(lambda: health.get("audit_index", {}).get("indexed_seq") == 500)  # type: ignore[attr-defined]
        h = health["audit_index"]
        assert isinstance(h, dict) and h["status"] == "ok" and h["lag_records"] == 0 and h["running"]
        assert w.status()["index"]["indexed_seq"] == 500
        pid = h["pid"]
        await asyncio.gather(*(w.record(call_rec(i)) for i in range(500, 700)))
        await w.close()                         # no wait for the tick: close hands over the end
        return int(pid)

    pid = asyncio.run(go())
    assert not Path(f"/proc/{pid}").exists()    # it stopped with the writer (and was reaped)
    assert _seqs(audit) == list(range(1, 701))
    idx = Index(audit)
    assert len(idx.query(agent="a1", limit=1000)) == 167
    idx.close()


def test_a_killed_indexer_is_restarted_and_catches_up_while_calls_go_on(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    health: dict[str, object] = {}

    async def go() -> None:
        w = AuditWriter(audit, None, Settings(), health=health)
        await w.open()
        for i in range(50):
            await w.record(call_rec(i))
        await _until(lambda: w.indexer.indexed == 50)
        proc = w.indexer.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        for i in range(50, 150):                # calls never wait for the index
            await w.record(call_rec(i))
        await _until(lambda: w.indexer.restarts == 1)
        down = health["audit_index"]
        assert isinstance(down, dict)
        assert w.indexer.proc is not None or (down["status"] == "degraded" and "exited" in down["error"])
        await _until(lambda: w.indexer.indexed == 150)
        assert w.indexer.proc is not None and w.indexer.proc.pid != proc.pid
        await w.close()

    asyncio.run(go())
    assert _seqs(audit) == list(range(1, 151))


def test_the_indexer_finishes_on_eof_when_the_gateway_dies(tmp_path: Path) -> None:
    """The gateway killed: its end of the pipe closes; the child indexes what it was told, then exits."""
    audit = tmp_path / "audit"
    audit.mkdir()
    for i in range(4):
        append_locked(audit, None, call_rec(i))
    (audit / "index.db").unlink()
    log = next(audit.glob("*.log"))
    end = [o + 4 + n for o, n, _ in iter_records(log)][2]
    p = subprocess.run([sys.executable, "-I", "-B", "-m", "stockade.audit.index", str(audit)],
                       input=f"H 3 {log.name} {end}\n".encode(), capture_output=True, timeout=120)
    assert p.returncode == 0 and p.stdout == b"I 0\nI 3\n"
    assert _seqs(audit) == [1, 2, 3]          # the 4th is past the durable end it was told


def test_pruning_a_file_unindexes_exactly_its_rows(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    write_log(audit, None, days=("2026-01-01", "2026-01-02", "2026-01-03"), per_day=4)
    idx = Index(audit)
    idx.catch_up()
    assert idx.conn.execute("SELECT name FROM sqlite_master WHERE name='records_file'").fetchone() is None
    idx.prune_file("2026-01-01.log", 4)
    idx.prune_file("2026-01-03.log")           # no last seq: the whole table is looked at
    assert [r[0] for r in idx.conn.execute("SELECT seq FROM records ORDER BY seq")] == [5, 6, 7, 8]
    idx.close()
