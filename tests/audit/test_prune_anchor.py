"""Deleting the oldest records is never mistaken for pruning (issue 14 item 8).

A signed checkpoint may start the chain only when it records a prune (signed reason and file) of
a whole day file older than the retention period; an exported checkpoint below the first record
still present is a finding.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import cbor2
import pytest
from tests.audit.helpers import StepClock, call_rec, day_us, frames, make_keys, write_log

from stockade.audit import checkpoint as cp
from stockade.audit.index import iter_records
from stockade.audit.verify import day_files, verify_dir
from stockade.audit.writer import AuditWriter, Settings

D1, D2, D3 = "2026-01-01.log", "2026-01-02.log", "2026-01-03.log"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("anchor")
    write_log(root / "audit", make_keys(root), per_day=8, checkpoint_every=4)   # periodic cps at 4, 8, ... 24
    return root


@pytest.fixture
def log(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "h")
    return tmp_path / "h"


def verify(root: Path, **kw):  # type: ignore[no-untyped-def]
    return verify_dir(root / "audit", cp.load_public(root / "keys"), **kw)


def last_hash(path: Path) -> bytes:
    off, n = frames(path)[-1]
    return cbor2.loads(path.read_bytes()[off + 4:off + n])["hash"]


def test_cutting_records_up_to_a_periodic_checkpoint_mid_file_is_a_finding(log: Path) -> None:
    (log / "audit" / D1).unlink()
    d2 = log / "audit" / D2
    d2.write_bytes(d2.read_bytes()[frames(d2)[4][0]:])           # seq 9..12 gone too; 12 is checkpointed
    r = verify(log)
    assert not r.ok and (r.findings[0].cause, r.findings[0].seq) == ("start_unanchored", 13)


def test_deleting_a_whole_day_file_at_a_periodic_checkpoint_is_a_finding(log: Path) -> None:
    (log / "audit" / D1).unlink()                                 # seq 8 is checkpointed (periodic)
    r = verify(log)
    assert not r.ok and (r.findings[0].cause, r.findings[0].seq) == ("start_unanchored", 9)


def test_relabelling_a_checkpoint_as_a_prune_is_caught(log: Path) -> None:
    path = log / "audit" / cp.LOG_NAME
    entries = cp.read_log(path)
    for c in entries:
        if c["seq"] == 8:
            c["reason"], c["retention_days"] = "prune", 1       # not covered by the old signature
    path.write_text("".join(json.dumps(c) + "\n" for c in entries))
    (log / "audit" / D1).unlink()
    assert not verify(log).ok


def test_a_prune_checkpoint_must_be_of_a_file_past_retention(log: Path) -> None:
    key = cp.load_private(log / "keys")
    h8 = last_hash(log / "audit" / D1)
    (log / "audit" / D1).unlink()
    young = cp.make(key, 8, h8, day_us("2026-01-03"), "prune", D1, retention_days=30)
    cp.append(log / "audit" / cp.LOG_NAME, young)
    r = verify(log)
    assert not r.ok and r.findings[0].cause == "start_unanchored"
    old = cp.make(key, 8, h8, day_us("2026-03-01"), "prune", D1, retention_days=30)
    cp.append(log / "audit" / cp.LOG_NAME, old)
    r = verify(log)
    assert r.ok and r.start == "checkpoint" and r.first_seq == 9


def test_a_prune_checkpoint_must_name_a_whole_earlier_day_file(log: Path) -> None:
    key = cp.load_private(log / "keys")
    d2 = log / "audit" / D2
    off, n = frames(d2)[3]
    h12 = cbor2.loads(d2.read_bytes()[off + 4:off + n])["hash"]
    (log / "audit" / D1).unlink()
    d2.write_bytes(d2.read_bytes()[off + n:])                       # seq 13.. left in D2
    cp.append(log / "audit" / cp.LOG_NAME, cp.make(key, 12, h12, day_us("2026-06-01"), "prune", D2, retention_days=1))
    r = verify(log)
    assert not r.ok and r.findings[0].cause == "start_unanchored"


def pruned_home(tmp_path: Path) -> tuple[Path, dict]:
    """A real prune by the writer; returns the root and a checkpoint exported before it."""
    keys = make_keys(tmp_path)
    write_log(tmp_path / "audit", keys, days=("2026-01-01", "2026-01-02", "2026-01-10"), per_day=4,
              shutdown_checkpoint=True)
    exported = cp.latest(tmp_path / "audit" / cp.LOG_NAME)
    assert exported is not None and exported["seq"] == 12

    async def go() -> None:
        w = AuditWriter(tmp_path / "audit", keys, Settings(retention_days=5),
                        clock=StepClock(day_us("2026-01-10", 7200)))
        await w.open()
        await asyncio.sleep(0.3)            # the retention task runs at start
        await w.record(call_rec(100))
        await w.close()

    asyncio.run(go())
    return tmp_path, exported


def test_a_real_prune_is_recorded_checkpointed_and_shown(tmp_path: Path) -> None:
    root, exported = pruned_home(tmp_path)
    assert [p.name for p in day_files(root / "audit")] == ["2026-01-10.log"]
    r = verify(root)
    assert r.ok and r.start == "checkpoint" and r.first_seq == 9, r.findings
    assert any("pruned" in n and "2026-01-02.log" in n for n in r.notes), r.notes
    recs = [rec for p in day_files(root / "audit") for _o, _l, rec in iter_records(p)]
    pruned = [rec for rec in recs if rec.get("kind") == "audit.pruned"]
    assert [p["file"] for p in pruned] == ["2026-01-01.log", "2026-01-02.log"]
    assert [p["last_seq"] for p in pruned] == [4, 8]
    head = max(rec["seq"] for rec in recs)
    assert r.anchored_through is not None and r.anchored_through >= max(p["seq"] for p in pruned)
    assert head == r.last_seq


def test_an_exported_checkpoint_below_the_first_record_is_a_finding(tmp_path: Path) -> None:
    root, _ = pruned_home(tmp_path)
    key = cp.load_private(root / "keys")
    early = cp.make(key, 4, b"\x11" * 32, day_us("2026-01-01", 7200), "manual", "2026-01-01.log")
    r = verify(root, extra_checkpoints=[early])
    assert not r.ok and r.findings[0].cause == "checkpoint_before_start" and r.findings[0].seq == 4
