"""The native fast paths (_native.c) agree with the Python ones they stand in for.

The C encoder may decline a record (None: Python encodes it) but never produce other bytes than
`record._build_fast`; the C checker may stop at a record (Python checks it) but never accept one
`record.check_fast` would not. Whole logs, intact or damaged, give the same verify report either way.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.audit import record as R
from stockade.audit.verify import verify_buffers

NATIVE = R._native_mod
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native audit module is not built (make)")

PREV = bytes(range(32))

ascii_keys = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
any_keys = st.one_of(ascii_keys, st.text(max_size=4), st.integers(-3, 3))
big_ints = st.one_of(st.integers(-(2**64) - 2, 2**64 + 2), st.sampled_from([2**63, -(2**63) - 1, 2**64 - 1,
                                                                            -(2**64), 2**64, -(2**64) - 1]))
leaves = st.one_of(st.none(), st.booleans(), big_ints, st.text(max_size=12), st.binary(max_size=12),
                   st.floats(allow_nan=True), st.sampled_from(["\ud800", "a\udfffb"]))
common_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.text(max_size=12),
                          st.binary(max_size=12))


def values(leaf: st.SearchStrategy, keys: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=4), st.tuples(c, c),
                                                  st.dictionaries(keys, c, max_size=4)), max_leaves=12)


records = st.dictionaries(st.one_of(ascii_keys, st.sampled_from(["seq", "ts", "prev", "hash", "é"])),
                          values(leaves, any_keys), max_size=8)
common = st.dictionaries(ascii_keys, values(common_leaves, ascii_keys), max_size=8)


def _python(fields: dict, seq: int, ts: int) -> tuple[bytes, bytes] | None:
    saved, R.NATIVE = R.NATIVE, None
    try:
        return R._build_fast(fields, seq, ts, PREV)
    finally:
        R.NATIVE = saved


def _native(fields: dict, seq: int, ts: int) -> tuple[bytes, bytes] | None:
    order = R._top_order(fields)
    if order is None:
        return None
    return NATIVE.build(fields, order, seq, ts, PREV, R.MAX_RECORD_DEPTH, R.MAX_ARGS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.integers(1, 2**64 - 1), st.integers(-(2**63), 2**64 - 1))
def test_encoder_never_differs(fields: dict, seq: int, ts: int) -> None:
    nat = _native(fields, seq, ts)
    if nat is not None:
        py = _python(fields, seq, ts)
        assert py is not None
        assert nat == (R.frame(py[0]), py[1])
    # and build_frame (what the writer calls) equals the plain encoder whichever path it takes
    try:
        body, digest = R.build(fields, seq, ts, PREV)
    except ValueError:
        return
    assert R.build_frame(fields, seq, ts, PREV) == (R.frame(body), digest)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(common, st.integers(1, 2**64 - 1), st.integers(-(2**63), 2**64 - 1))
def test_encoder_takes_the_common_record(fields: dict, seq: int, ts: int) -> None:
    """JSON-like records with ASCII keys are the native path's (else it would never be exercised)."""
    nat = _native(fields, seq, ts)
    assert nat is not None
    py = _python(fields, seq, ts)
    assert py is not None and nat == (R.frame(py[0]), py[1])
    assert NATIVE.check(py[0])


def test_encoder_declines_past_the_limits() -> None:
    deep: object = "x"
    for _ in range(R.MAX_RECORD_DEPTH + 2):
        deep = [deep]
    assert _native({"args": deep}, 1, 1) is None
    assert _native({"args": 2**64}, 1, 1) is None
    assert _native({"args": {"k": 1.5}}, 1, 1) is None
    assert _native({"args": "x" * R.MAX_ARGS}, 1, 1) is None
    assert R.build_frame({"args": deep}, 1, 1, PREV)[0][4:] == R.build({"args": deep}, 1, 1, PREV)[0]
    order = R._top_order({"a": 1})
    for seq, ts, prev in ((True, 1, PREV), (1, False, PREV), (1, 1, bytearray(PREV)), (1, 1, PREV[:31])):
        assert NATIVE.build({"a": 1}, order, seq, ts, prev, R.MAX_RECORD_DEPTH, R.MAX_ARGS) is None
        if len(prev) == 32:
            assert R.build_frame({"a": 1}, seq, ts, prev) == (R.frame(R.build({"a": 1}, seq, ts, prev)[0]),
                                                              R.build({"a": 1}, seq, ts, prev)[1])


def _mutations(body: bytes, rnd: random.Random) -> list[bytes]:
    out = []
    for _ in range(12):
        b = bytearray(body)
        i = rnd.randrange(len(b))
        op = rnd.randrange(4)
        if op == 0:
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            del b[i]
        elif op == 2:
            b.insert(i, rnd.randrange(256))
        else:
            b[i] = rnd.choice([0x18, 0x19, 0x1A, 0x1B, 0x5F, 0x7F, 0xF9, 0xF7, 0xC0, 0x80, 0xFF])
        out.append(bytes(b))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.integers(0, 2**32))
def test_checker_accepts_only_what_python_accepts(fields: dict, seed: int) -> None:
    try:
        body, _ = R.build(fields, 7, 1_700_000_000_000_000, PREV)
    except ValueError:
        return
    assert bool(NATIVE.check(body)) <= (R.check_fast(body) is not None)
    for bad in _mutations(body, random.Random(seed)):
        if NATIVE.check(bad):
            assert R.check_fast(bad) is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values(leaves, any_keys))
def test_checker_on_hand_made_cbor(v: object) -> None:
    """Records not made by the writer (floats, tags, unsorted keys, non-text keys) in a record shell."""
    try:
        shell = cbor2.dumps({"args": v, "hash": bytes(32), "prev": PREV, "seq": 1, "ts": 0})
    except Exception:
        return
    if NATIVE.check(shell):
        assert R.check_fast(shell) is not None


def _log(rnd: random.Random, n: int, floats: bool = True) -> list[bytes]:
    frames, prev = [], R.ZERO_HASH
    for i in range(n):
        args: dict[str, Any] = {"path": f"/w/{i}", "n": rnd.randrange(-5, 10**12)}
        rec: dict[str, Any] = {"kind": "call", "i": i, "args": args}
        if floats and rnd.random() < 0.1:
            args["ratio"] = 0.5          # floats: the Python checker's
        if rnd.random() < 0.1:
            rec["note"] = "ünïcode \u4e2d \U0001f600"     # non-ASCII text
        body, prev = R.build(rec, i + 1, 1_700_000_000_000_000 + i, prev)
        frames.append(R.frame(body))
    return frames


def _report(files: list[tuple[str, bytes]], cps: dict[int, bytes], native: bool) -> dict:
    saved, R.NATIVE = R.NATIVE, (NATIVE if native else None)
    try:
        return verify_buffers(files, cps).to_dict()
    finally:
        R.NATIVE = saved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(2, 60), st.sampled_from(["none", "flip", "drop", "swap", "cut", "dup"]))
def test_verify_reports_agree(seed: int, n: int, damage: str) -> None:
    rnd = random.Random(seed)
    frames = _log(rnd, n)
    hashes = [R.check(f[4:])["hash"] for f in frames]
    cps = {s: hashes[s - 1] for s in rnd.sample(range(1, n + 1), k=min(3, n))}
    i = rnd.randrange(n)
    if damage == "flip":
        b = bytearray(frames[i])
        b[rnd.randrange(4, len(b))] ^= 1 << rnd.randrange(8)
        frames[i] = bytes(b)
    elif damage == "drop":
        del frames[i]
    elif damage == "swap" and i + 1 < n:
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
    elif damage == "dup":
        frames.insert(i, frames[i])
    split = rnd.randrange(len(frames) + 1)
    files = [("2026-01-01.log", b"".join(frames[:split])), ("2026-01-02.log", b"".join(frames[split:]))]
    if damage == "cut":
        files[-1] = (files[-1][0], files[-1][1][:-rnd.randrange(1, 20)])
    assert _report(files, cps, True) == _report(files, cps, False)


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\xaf", b"\xc3", b"\xff",
                                 b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xe4\xb8\xad"])
def test_checker_on_text_bytes(raw: bytes) -> None:
    """Text values: well-formed UTF-8 is the checker's; anything else is left to Python (and fails there)."""
    body, _ = R.build({"note": "zzzz"}, 1, 0, PREV)
    fake = body.replace(b"dzzzz", bytes([0x60 + len(raw)]) + raw)
    assert NATIVE.check(fake) is False        # the hash no longer matches either way
    fields = {"note": raw.decode("utf-8", "surrogatepass") if raw in (b"\xc3\xa9", b"\xf0\x9f\x98\x80",
                                                                       b"\xe4\xb8\xad") else "x"}
    good, _ = R.build(fields, 1, 0, PREV)
    assert NATIVE.check(good) and R.check_fast(good) is not None
    # the same shell with the raw bytes and a recomputed hash: accepted natively only if Python accepts it
    rec = {"note": "\x00" * len(raw), "prev": PREV, "seq": 1, "ts": 0}
    enc = cbor2.dumps(rec, canonical=True).replace(b"\x00" * len(raw), raw)
    import hashlib
    digest = hashlib.sha256(PREV + enc).digest()
    shell = cbor2.dumps({**rec, "hash": digest}, canonical=True).replace(b"\x00" * len(raw), raw)
    assert bool(NATIVE.check(shell)) == (R.check_fast(shell) is not None)


def test_parallel_verify_agrees_with_and_without_native(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_dir's multi-core pass (threads over the native scan; forked workers without it) gives
    the sequential verdict, checkpoints included, and falls back on damage."""
    from stockade.audit import verify as V

    frames = _log(random.Random(5), 400, floats=False)      # a float sends the whole log to the sequential pass
    hashes = [R.check(f[4:])["hash"] for f in frames]
    (tmp_path / "2026-01-01.log").write_bytes(b"".join(frames[:150]))
    (tmp_path / "2026-01-02.log").write_bytes(b"".join(frames[150:]))
    cps = {120: hashes[119], 300: hashes[299]}

    def run(native: bool, parallel: bool) -> dict:
        monkeypatch.setattr(R, "NATIVE", NATIVE if native else None)
        monkeypatch.setattr(V, "PARALLEL_MIN_BYTES", 0 if parallel else 1 << 40)
        monkeypatch.setattr(V, "_CHUNK_BYTES", 5000)
        monkeypatch.setattr(V.os, "cpu_count", lambda: 2)
        files = V.day_files(tmp_path)
        if parallel:
            rep = V._parallel(files, [p.stat().st_size for p in files], cps, False, 2)
            assert rep is not None
            return {"records": rep.records, "last_seq": rep.last_seq, "head": rep.head,
                    "anchored_through": rep.anchored_through}
        v = V.ChainVerifier(cps)
        for i, p in enumerate(files):
            v.feed(p.name, p.read_bytes(), last=i == len(files) - 1)
        rep = v.finish()
        assert rep.ok
        return {"records": rep.records, "last_seq": rep.last_seq, "head": rep.head,
                "anchored_through": rep.anchored_through}

    want = run(False, False)
    assert want["records"] == 400 and want["anchored_through"] == 300
    assert run(True, False) == want and run(True, True) == want and run(False, True) == want
    data = bytearray((tmp_path / "2026-01-02.log").read_bytes())
    data[9000] ^= 1
    (tmp_path / "2026-01-02.log").write_bytes(bytes(data))
    for native in (True, False):
        monkeypatch.setattr(R, "NATIVE", NATIVE if native else None)
        files = V.day_files(tmp_path)
        assert V._parallel(files, [p.stat().st_size for p in files], cps, False, 2) is None
        v = V.ChainVerifier(cps)                  # the sequential pass it falls back to reports it
        for i, p in enumerate(files):
            v.feed(p.name, p.read_bytes(), last=i == len(files) - 1)
        assert not v.finish().ok
