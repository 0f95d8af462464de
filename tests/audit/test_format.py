"""The on-disk format is docs/design.md "Formats", checked by an independent verifier (cbor2 + hashlib only)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.audit.helpers import call_rec, make_keys, write_log

from stockade.audit import record as R


def independent_verify(files: list[Path]) -> int:
    """docs/design.md "Formats" with nothing but cbor2 and hashlib: returns the number of records."""
    prev = bytes(32)
    expected_seq = 1
    for path in files:
        data = path.read_bytes()
        o = 0
        while o < len(data):
            n = int.from_bytes(data[o:o + 4], "big")
            body = data[o + 4:o + 4 + n]
            assert len(body) == n, f"{path.name}: short record at {o}"
            rec = cbor2.loads(body)
            assert isinstance(rec, dict) and all(isinstance(k, str) for k in rec)
            assert cbor2.dumps(rec, canonical=True) == body, "not deterministic CBOR"
            assert rec["seq"] == expected_seq
            assert isinstance(rec["ts"], int)
            assert rec["prev"] == prev
            without = {k: v for k, v in rec.items() if k != "hash"}
            assert rec["hash"] == hashlib.sha256(prev + cbor2.dumps(without, canonical=True)).digest()
            prev = rec["hash"]
            expected_seq += 1
            o += 4 + n
    return expected_seq - 1


def test_writer_output_passes_the_independent_verifier(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    write_log(audit, make_keys(tmp_path), per_day=6)
    files = sorted(audit.glob("????-??-??.log"))
    assert [p.name for p in files] == ["2026-01-01.log", "2026-01-02.log", "2026-01-03.log"]
    assert independent_verify(files) == 18
    first = cbor2.loads(files[0].read_bytes()[4:])
    assert first["prev"] == bytes(32) and first["seq"] == 1
    # cross-file continuity: the first record of a day chains from the last record of the day before
    d2 = files[1].read_bytes()
    assert cbor2.loads(d2[4:4 + int.from_bytes(d2[:4], "big")])["seq"] == 7
    for k in ("agent", "session", "capability", "args", "decision", "outcome", "duration_us", "ts", "prev", "hash"):
        assert k in first


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20),
                      st.floats(allow_nan=True, allow_infinity=True), st.binary(max_size=10))
json_like = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), c, max_size=4)),
                         max_leaves=15)


@settings(max_examples=150, deadline=None)
@given(args=json_like, extra=st.dictionaries(st.text(min_size=1, max_size=12), json_leaf, max_size=4))
def test_build_is_deterministic_cbor_and_checks(args: object, extra: dict) -> None:
    fields = {**call_rec(1), **extra, "args": args}
    prev = hashlib.sha256(repr(args).encode()).digest()
    body, digest = R.build(fields, 42, 1_700_000_000_000_000, prev)
    rec = cbor2.loads(body)
    assert cbor2.dumps(rec, canonical=True) == body
    without = {k: v for k, v in rec.items() if k != "hash"}
    assert digest == rec["hash"] == hashlib.sha256(prev + cbor2.dumps(without, canonical=True)).digest()
    assert rec["seq"] == 42 and rec["prev"] == prev
    assert R.check(body)["seq"] == 42
    fast = R.check_fast(body)
    assert fast is None or fast["hash"] == digest   # the fast path may defer, never disagree


def test_reserved_keys_cannot_be_forged_by_callers() -> None:
    body, digest = R.build({"kind": "x", "seq": 999, "prev": b"x", "hash": b"y", "ts": -5}, 3, 10, bytes(32))
    rec = cbor2.loads(body)
    assert rec["seq"] == 3 and rec["ts"] == 10 and rec["prev"] == bytes(32) and rec["hash"] == digest


def test_odd_values_are_normalized_not_fatal() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    body, _ = R.build({"kind": "x", "obj": Thing(), "lone": "\ud800", 5: {3, 1}, "nan": math.nan}, 1, 1, bytes(32))
    rec = R.check(body)
    assert rec["obj"] == "thing" and rec["5"] == [1, 3] and isinstance(rec["lone"], str)


def test_huge_args_are_replaced_by_a_digest() -> None:
    body, _ = R.build({**call_rec(1), "args": {"blob": "x" * (2 << 20)}}, 1, 1, bytes(32))
    rec = R.check(body)
    assert rec["args"]["_truncated"] is True and len(body) < R.MAX_ARGS


@pytest.mark.parametrize("value", [{"b": 1, "a": 2}, {"a": 1.5}, {"a": [1, {"z": 1, "y": 2}]}])
def test_fast_and_slow_checks_agree_on_non_canonical(value: dict) -> None:
    rec = {"seq": 1, "ts": 1, "prev": bytes(32), "x": value}
    h = hashlib.sha256(bytes(32) + cbor2.dumps(rec, canonical=True)).digest()
    good = cbor2.dumps({**rec, "hash": h}, canonical=True)
    assert R.check(good)
    # the same record with keys in insertion order and floats as float64: not deterministic
    bad = cbor2.dumps({"x": value, "hash": h, "seq": 1, "ts": 1, "prev": bytes(32)})
    if bad != good:
        assert R.check_fast(bad) is None
        with pytest.raises(R.BadRecord) as e:
            R.check(bad)
        assert e.value.cause == "non_canonical"
