"""A real full filesystem (a small tmpfs mounted as the audit directory).

Buffer mode (issue 23 item 2): a call is acknowledged only once its record is durable. While
the disk is full, records go into space reserved in advance (`audit.reserve_bytes`, released
as needed), with a critical alert; once the reserve is used up, calls are refused, never
acknowledged and dropped; a stop in the middle of it loses no acknowledged call and reuses no
seq. A full disk at start is a clear error. Halt mode: calls are refused at once and the chain
never skips a seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from tests.audit.helpers import call_rec, frames, make_keys
from tests.conftest import STOCKADE, need_root, run_cli, tmpfs_at

from stockade.audit import checkpoint as cp
from stockade.audit.verify import verify_dir
from stockade.audit.writer import AuditWriter, Settings, try_lock
from stockade.core.errors import StockadeError
from stockade.core.events import EventBus

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs_at(tmp_path / "audit", "256k") as audit:
        yield audit


def fill(audit: Path) -> Path:
    """Use up every free byte with a filler file."""
    filler = audit / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        while True:         # the last partial page too
            try:
                os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def log_records(audit: Path) -> list[dict]:
    out = []
    for p in sorted(audit.glob("????-??-??.log")):
        data = p.read_bytes()
        out += [cbor2.loads(data[o + 4:o + n]) for o, n in frames(p)]
    return out


def calls_in_log(audit: Path) -> list[str]:
    return [r["call"] for r in log_records(audit) if "call" in r]


def test_disk_full_writes_into_the_reserve_acks_only_durable_records(small_fs: Path, tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    bus = EventBus()
    health: dict = {}
    acked: list[str] = []

    async def go() -> None:
        w = AuditWriter(small_fs, keys, Settings(reserve_bytes=48 << 10, retry_seconds=0.2,
                                                 checkpoint_every=10_000), bus=bus, health=health)
        await w.open()
        assert (small_fs / "reserve").stat().st_size == 48 << 10
        i = 0
        for _ in range(5):
            await w.record(call_rec(i))
            acked.append(f"{i:032x}")
            i += 1
        filler = fill(small_fs)
        refused = 0
        for _ in range(2000):                 # acknowledged while the reserve lasts, then refused
            try:
                await w.record(call_rec(i))
                acked.append(f"{i:032x}")
                # acknowledged means durable: it is in the file now, not in memory
                assert calls_in_log(small_fs)[-1] == acked[-1]
            except StockadeError as e:
                assert e.type == "Internal" and e.data["audit"] == "buffer_full" and "reserve" in e.message
                refused += 1
                if refused == 3:
                    break
            i += 1
        assert refused == 3 and len(acked) > 40
        assert health["audit"]["status"] == "critical" and "disk full" in health["audit"]["error"]
        alerts = [e for e in bus.history if e.kind == "health.audit" and e.severity == "critical"]
        assert len(alerts) == 1
        assert not w._queue                       # nothing waits in memory
        await asyncio.sleep(0.5)
        assert w.disk_full                        # retries keep failing while the disk is full
        filler.unlink()                           # space returns
        for _ in range(100):
            await asyncio.sleep(0.1)
            if not w.disk_full:
                break
        assert not w.disk_full and health["audit"]["status"] == "ok"
        assert (small_fs / "reserve").stat().st_size == 48 << 10      # the reserve is back
        await w.record(call_rec(10_000))
        acked.append(f"{10_000:032x}")
        await w.close()
        assert w.dropped == 0

    asyncio.run(go())
    recs = log_records(small_fs)
    assert calls_in_log(small_fs) == acked       # every acknowledged record, in order, none extra
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    gap = [r for r in recs if r.get("kind") == "audit.disk_full"]
    assert len(gap) == 1 and gap[0]["refused"] == 3 and gap[0]["reserve_used"] > 0
    assert any(e.kind == "health.audit" and e.data.get("recovered") for e in bus.history)
    r = verify_dir(small_fs, cp.load_public(keys))
    assert r.ok, r.findings


def test_stop_while_the_disk_is_full_loses_no_acknowledged_record(small_fs: Path, tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    acked: list[str] = []

    async def go() -> int:
        w = AuditWriter(small_fs, keys, Settings(reserve_bytes=16 << 10, retry_seconds=30), health={})
        await w.open()
        fill(small_fs)
        for i in range(1000):
            try:
                await w.record(call_rec(i))
                acked.append(f"{i:032x}")
            except StockadeError:
                break
        await w.close()                         # a clean stop with the disk still full
        return w.dropped

    assert asyncio.run(go()) == 0
    assert calls_in_log(small_fs) == acked and len(acked) > 5
    (small_fs / "filler").unlink()

    async def again() -> int:                   # after a restart: no seq reused, chain intact
        w = AuditWriter(small_fs, keys, Settings(reserve_bytes=16 << 10))
        await w.open()
        seq = await w.record(call_rec(5000))
        await w.close()
        return seq

    seq = asyncio.run(again())
    recs = log_records(small_fs)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1)) and recs[-1]["seq"] == seq
    assert verify_dir(small_fs, cp.load_public(keys)).ok


def test_a_full_disk_at_start_is_a_clear_error(small_fs: Path, tmp_path: Path) -> None:
    fill(small_fs)

    async def go() -> None:
        w = AuditWriter(small_fs, None, Settings(reserve_bytes=64 << 10))
        await w.open()

    with pytest.raises(StockadeError) as e:
        asyncio.run(go())
    assert "disk full" in e.value.message and "reserve" in e.value.message
    fd = try_lock(small_fs)                     # and the lock was released
    assert fd is not None
    os.close(fd)


def test_halt_mode_refuses_at_once_and_never_skips_a_seq(small_fs: Path, tmp_path: Path) -> None:
    health: dict = {}
    acked: list[str] = []

    async def go() -> None:
        w = AuditWriter(small_fs, None, Settings(fail_mode="halt", retry_seconds=0.2), health=health)
        await w.open()
        await w.record(call_rec(0))
        acked.append(f"{0:032x}")
        filler = fill(small_fs)
        refused = 0
        for i in range(1, 300):
            try:
                await w.record(call_rec(i))
                acked.append(f"{i:032x}")
            except StockadeError as e:
                assert e.data["audit"] == "halt"
                refused += 1
                if refused >= 5:
                    break
        assert health["audit"]["status"] == "critical"
        filler.unlink()
        for _ in range(100):
            await asyncio.sleep(0.1)
            if not w.disk_full:
                break
        assert health["audit"]["status"] == "ok"
        await w.record(call_rec(999))
        acked.append(f"{999:032x}")
        await w.close()

    asyncio.run(go())
    recs = log_records(small_fs)
    assert [r["call"] for r in recs if "call" in r] == acked
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["refused"] for r in recs if r.get("kind") == "audit.disk_full"] == [5]
    with contextlib.suppress(FileNotFoundError):
        assert verify_dir(small_fs, None).ok


def test_serve_with_a_full_audit_disk_is_a_clear_error(tmp_path: Path) -> None:
    need_root()
    home = tmp_path / "home"
    run_cli("init", home=home)
    audit = home / "audit"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(audit)], check=True)
    try:
        fill(audit)
        p = subprocess.run([*STOCKADE, "serve", "--home", str(home), "--port", "0", "--dashboard-port", "0"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode in (2, 3), (p.stdout, p.stderr)      # refused at once (it used to hang)
        assert "disk full" in p.stderr and "Traceback" not in p.stderr + p.stdout
    finally:
        subprocess.run(["umount", "-l", str(audit)], check=False)


def test_server_reports_disk_full_and_loses_nothing(tmp_path: Path) -> None:
    """The real `stockade serve` with its audit directory on a small tmpfs."""
    need_root()
    import yaml
    from tests.conftest import cli_json, run_cli, start_server

    home = tmp_path / "home"
    run_cli("init", home=home)
    cfg = yaml.safe_load((home / "stockade.yaml").read_text())
    cfg["audit"] = {"retry_seconds": 0.3, "reserve_bytes": 32 << 10}
    (home / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    audit = home / "audit"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(audit)], check=True)
    server = None
    try:
        key = cli_json("agent", "create", "dfa", home=home)["key"]
        server = start_server(home)
        acked = 0
        for _ in range(5):
            assert "result" in server.invoke(key, "system.time")
            acked += 1
        filler = fill(audit)
        for _ in range(400):                     # calls go on; the health layer turns critical
            h = server.invoke(key, "system.health")["result"]
            acked += 1
            if h["layers"]["audit"]["status"] == "critical":
                assert "disk full" in h["layers"]["audit"]["error"] and h["status"] == "critical"
                break
        else:
            raise AssertionError("no critical audit health")
        refused = 0
        for _ in range(2000):                    # until the reserve is used up: then calls are refused
            r = server.invoke(key, "system.time")
            if "result" in r:
                acked += 1
            else:
                assert r["error"]["data"]["type"] == "Internal" and r["error"]["data"]["audit"] == "buffer_full"
                assert "reserve" in r["error"]["message"]
                refused += 1
                break
        assert refused == 1
        filler.unlink()
        for _ in range(100):
            time.sleep(0.1)
            h = server.invoke(key, "system.health")
            if "result" in h and h["result"]["layers"]["audit"]["status"] == "ok":
                acked += 1
                break
        else:
            raise AssertionError("audit did not recover")
        assert server.stop() == 0
        server = None
        v = cli_json("audit", "verify", home=home)
        assert v["ok"], v
        q = cli_json("audit", "query", "--agent", "dfa", "--kind", "call", "--outcome", "ok", "--limit", "100000",
                     home=home)["records"]
        assert len(q) >= acked
        seqs = [r["seq"] for r in q]
        assert seqs == sorted(seqs)
        events = cli_json("audit", "query", "--kind", "audit.disk_full", home=home)["records"]
        assert len(events) == 1 and events[0]["refused"] >= 1
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(audit)], check=False)
