"""Attacks on the log: every one is detected, with the right file, seq and cause; never a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.audit.helpers import frames, make_keys, write_log

from stockade.audit import checkpoint as cp
from stockade.audit.verify import verify_buffers, verify_dir

D1, D2, D3 = "2026-01-01.log", "2026-01-02.log", "2026-01-03.log"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    write_log(root / "audit", make_keys(root), per_day=8)
    return root


@pytest.fixture
def log(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "h")
    return tmp_path / "h"


def verify(root: Path, **kw):  # type: ignore[no-untyped-def]
    return verify_dir(root / "audit", cp.load_public(root / "keys"), **kw)


def only(report, cause: str | None = None):  # type: ignore[no-untyped-def]
    assert not report.ok, "tampering not detected"
    f = report.findings[0]
    if cause:
        assert f.cause == cause, report.findings
    return f


def test_pristine_log_is_intact(log: Path) -> None:
    r = verify(log)
    assert r.ok and r.records == 24 and r.first_seq == 1 and r.last_seq == 24 and r.start == "genesis"


@pytest.mark.parametrize("rec_index", [0, 3, 7])
def test_every_flipped_byte_is_detected_at_its_seq(log: Path, rec_index: int) -> None:
    """Flip each byte of one record of the middle file (seqs 9..16) in turn."""
    path = log / "audit" / D2
    orig = path.read_bytes()
    off, ln = frames(path)[rec_index]
    seq = 9 + rec_index
    for i in range(off, off + ln):
        data = bytearray(orig)
        data[i] ^= 0x41
        path.write_bytes(bytes(data))
        f = only(verify(log))
        assert f.file == D2 and f.seq == seq, (i - off, f)
        assert f.cause != "torn"
    path.write_bytes(orig)
    assert verify(log).ok


def test_deleted_record(log: Path) -> None:
    path = log / "audit" / D2
    data = path.read_bytes()
    off, ln = frames(path)[2]                  # seq 11
    path.write_bytes(data[:off] + data[off + ln:])
    f = only(verify(log), "deleted")
    assert (f.file, f.seq) == (D2, 11)


def test_deleted_first_record_of_a_day(log: Path) -> None:
    path = log / "audit" / D3
    data = path.read_bytes()
    off, ln = frames(path)[0]                  # seq 17
    path.write_bytes(data[ln:])
    f = only(verify(log), "deleted")
    assert (f.file, f.seq) == (D3, 17)


def test_reordered_records(log: Path) -> None:
    path = log / "audit" / D1
    data = path.read_bytes()
    (a, la), (b, lb) = frames(path)[4], frames(path)[5]     # seq 5 and 6
    path.write_bytes(data[:a] + data[b:b + lb] + data[a:a + la] + data[b + lb:])
    f = only(verify(log), "reordered")
    assert (f.file, f.seq) == (D1, 5)


def test_replaced_record_with_valid_hash_breaks_the_link(log: Path) -> None:
    """An attacker re-hashes a modified record: its own hash is fine, the chain is not."""
    path = log / "audit" / D2
    data = path.read_bytes()
    off, ln = frames(path)[1]                  # seq 10
    rec = cbor2.loads(data[off + 4:off + ln])
    rec["args"] = {"path": "/innocent"}
    rec.pop("hash")
    rec["hash"] = hashlib.sha256(rec["prev"] + cbor2.dumps(rec, canonical=True)).digest()
    body = cbor2.dumps(rec, canonical=True)
    path.write_bytes(data[:off] + len(body).to_bytes(4, "big") + body + data[off + ln:])
    f = only(verify(log), "chain_break")
    assert (f.file, f.seq) == (D2, 11)


def test_truncated_middle_file(log: Path) -> None:
    path = log / "audit" / D2
    data = path.read_bytes()
    off, ln = frames(path)[5]                  # seq 14, cut in its middle
    path.write_bytes(data[:off + ln // 2])
    f = only(verify(log), "truncated")
    assert (f.file, f.seq) == (D2, 14)


def test_truncated_last_record_is_torn_not_tampering(log: Path) -> None:
    path = log / "audit" / D3
    data = path.read_bytes()
    off, ln = frames(path)[-1]                 # seq 24
    for cut in (1, 3, 4, 5, ln // 2, ln - 1):
        path.write_bytes(data[:off + cut])
        r = verify(log)
        f = only(r, "torn")
        assert (f.file, f.seq) == (D3, 24) and r.torn_only and r.to_dict()["status"] == "torn"


def test_truncation_at_a_record_boundary_needs_a_checkpoint(log: Path) -> None:
    path = log / "audit" / D3
    data = path.read_bytes()
    (off23, _), (off24, _) = frames(path)[-2:]
    head = cbor2.loads(data[off24 + 4:])
    assert head["seq"] == 24
    path.write_bytes(data[:off23])              # drop seq 23 and 24 cleanly
    assert verify(log).ok                      # a valid prefix is a valid chain...
    c = cp.make(cp.load_private(log / "keys"), 24, head["hash"], 1, "periodic", D3)
    cp.append(log / "audit" / cp.LOG_NAME, c)
    f = only(verify(log), "checkpoint_truncated")    # ...unless a signed checkpoint says otherwise
    assert f.seq == 23


def test_garbage_appended(log: Path) -> None:
    path = log / "audit" / D3
    with open(path, "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 10)
    f = only(verify(log), "garbage")
    assert (f.file, f.seq) == (D3, 25)


def test_malformed_cbor_in_a_valid_frame(log: Path) -> None:
    path = log / "audit" / D1
    data = path.read_bytes()
    off, ln = frames(path)[2]                  # seq 3
    body = b"\xbf" + b"\x00" * (ln - 5)        # indefinite map that never ends
    path.write_bytes(data[:off + 4] + body + data[off + ln:])
    f = only(verify(log), "malformed")
    assert (f.file, f.seq) == (D1, 3)


def test_non_canonical_record_with_matching_content(log: Path) -> None:
    path = log / "audit" / D1
    data = path.read_bytes()
    off, ln = frames(path)[1]                  # seq 2
    rec = cbor2.loads(data[off + 4:off + ln])
    body = cbor2.dumps(dict(reversed(list(rec.items()))))   # same content, keys unsorted
    path.write_bytes(data[:off] + len(body).to_bytes(4, "big") + body + data[off + ln:])
    f = only(verify(log), "non_canonical")
    assert (f.file, f.seq) == (D1, 2)


def test_deleted_day_file(log: Path) -> None:
    (log / "audit" / D2).unlink()
    f = only(verify(log), "deleted")
    assert (f.file, f.seq) == (D3, 9) and D1 in f.detail


def test_swapped_day_files(log: Path) -> None:
    a, b = log / "audit" / D1, log / "audit" / D2
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    r = verify(log)
    assert not r.ok and r.findings[0].file == D1


def test_deleted_head_of_log_without_checkpoint(log: Path) -> None:
    (log / "audit" / D1).unlink()
    f = only(verify(log), "start_unanchored")
    assert (f.file, f.seq) == (D2, 9)
    assert verify(log, since="2026-01-02").ok       # explicitly asked to start there


def test_whole_log_rewrite_is_caught_by_an_exported_checkpoint(log: Path, tmp_path: Path) -> None:
    exported = cp.make(cp.load_private(log / "keys"), 24,
                       cbor2.loads((log / "audit" / D3).read_bytes()[frames(log / "audit" / D3)[-1][0] + 4:])["hash"],
                       1, "manual", D3)
    # the attacker (root, no key) rewrites every record from seq 5 on with valid hashes
    files = sorted((log / "audit").glob("????-??-??.log"))
    prev, changed = None, 0
    for p in files:
        out = b""
        for off, ln in frames(p):
            rec = cbor2.loads(p.read_bytes()[off + 4:off + ln])
            if prev is not None:
                rec["prev"] = prev
            if rec["seq"] >= 5:
                rec["args"] = {"path": "/nothing-to-see"}
                changed += 1
            rec.pop("hash")
            rec["hash"] = hashlib.sha256(rec["prev"] + cbor2.dumps(rec, canonical=True)).digest()
            prev = rec["hash"]
            body = cbor2.dumps(rec, canonical=True)
            out += len(body).to_bytes(4, "big") + body
        p.write_bytes(out)
    assert changed == 20
    assert verify(log).ok                     # the chain alone cannot tell...
    r = verify(log, extra_checkpoints=[exported])
    f = only(r, "checkpoint_mismatch")         # ...the checkpoint kept elsewhere can
    assert (f.file, f.seq) == (D3, 24)


def test_forged_checkpoint_signature_is_reported(log: Path) -> None:
    c = cp.make(cp.load_private(log / "keys"), 3, b"\x00" * 32, 1, "periodic", D1)
    c["sig"] = c["sig"][:-4] + "AAA="
    (log / "audit" / cp.LOG_NAME).write_text(json.dumps(c) + "\nnot json\n")
    r = verify(log)
    assert {f.cause for f in r.findings} == {"checkpoint_invalid"}


# -- fuzzing: the reader never crashes; every corruption of a valid log is detected --------------
@pytest.fixture(scope="module")
def buffers(pristine: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((pristine / "audit").glob("????-??-??.log"))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    r = verify_buffers([("2026-01-01.log", data)])
    assert r.ok == (data == b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), pos=st.integers(0, 10**6), new=st.binary(min_size=1, max_size=8),
       mode=st.sampled_from(["replace", "insert", "delete"]))
def test_fuzz_mutations_of_a_valid_log(buffers: list[tuple[str, bytes]], which: int, pos: int, new: bytes,
                                       mode: str) -> None:
    name, data = buffers[which]
    pos %= len(data)
    if mode == "replace":
        mutated = data[:pos] + new + data[pos + len(new):]
    elif mode == "insert":
        mutated = data[:pos] + new + data[pos:]
    else:
        mutated = data[:pos] + data[pos + len(new):]
    files = list(buffers)
    files[which] = (name, mutated)
    r = verify_buffers(files)
    assert r.ok == (mutated == data)


def test_parallel_pre_pass_agrees_with_the_sequential_verifier(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade.audit import verify as V

    seq_report = verify(log).to_dict()
    monkeypatch.setattr(V, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(V, "_CHUNK_BYTES", 700)          # several chunks per day file
    monkeypatch.setattr(V.os, "cpu_count", lambda: 2)
    c = cp.make(cp.load_private(log / "keys"), 12, b"\x01" * 32, 1, "periodic", D2)
    assert V._parallel(sorted((log / "audit").glob("????-??-??.log")),
                       [p.stat().st_size for p in sorted((log / "audit").glob("????-??-??.log"))],
                       {}, False, 2) is not None
    par = verify(log).to_dict()
    assert par == seq_report
    cp.append(log / "audit" / cp.LOG_NAME, c)             # a checkpoint the log contradicts
    f = only(verify(log), "checkpoint_mismatch")
    assert (f.file, f.seq) == (D2, 12)
    (log / "audit" / cp.LOG_NAME).unlink()
    path = log / "audit" / D2
    data = bytearray(path.read_bytes())
    data[frames(path)[3][0] + 30] ^= 4
    path.write_bytes(bytes(data))
    f = only(verify(log))
    assert (f.file, f.seq) == (D2, 12)


def test_replayed_record_is_a_duplicate(log: Path) -> None:
    path = log / "audit" / D2
    data = path.read_bytes()
    off, ln = frames(path)[2]                  # seq 11, written twice
    path.write_bytes(data[:off + ln] + data[off:off + ln] + data[off + ln:])
    f = only(verify(log), "duplicate")
    assert (f.file, f.seq) == (D2, 12)
