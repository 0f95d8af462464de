"""The writer never writes a record its own reader cannot decode (issue 13 item 1).

Limits come from `stockade.core.limits`, shared with the edge. Anything the writer accepts, the
reader (`record.check`, the full canonical check, and `check_fast`) decodes back: exactly the
input when the input is within the limits, a bounded stand-in (digest, prefix, note) otherwise.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.audit import record as R
from stockade.core.limits import AUDIT_DECODE_DEPTH, MAX_RECORD_DEPTH, REFUSED_ARGS_PREFIX_BYTES

PREV = bytes(range(32))


def nest(depth: int, leaf: Any = 0, kind: str = "list") -> Any:
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


def depth_of(v: Any) -> int:
    """Nesting of a value (a leaf is 0), iteratively (inputs can be far deeper than the stack)."""
    best, todo = 0, [(v, 0)]
    while todo:
        x, d = todo.pop()
        if isinstance(x, dict | list):
            best = max(best, d + 1)
            todo.extend((c, d + 1) for c in (x.values() if isinstance(x, dict) else x))
    return best


def _walk(v: Any) -> list[Any]:
    out, todo = [], [v]
    while todo:
        x = todo.pop()
        out.append(x)
        if isinstance(x, dict):
            out.extend(x)
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)
    return out


def must_stand_in(v: Any) -> bool:
    """Past the limits (by the test's own reading of them): deeper, non-finite, beyond 64-bit integers."""
    for x in _walk(v):
        if isinstance(x, float) and not math.isfinite(x):
            return True
        if type(x) is int and not -(1 << 64) <= x < (1 << 64):
            return True
    return depth_of(v) > MAX_RECORD_DEPTH - 1     # the record map itself is one level


def exact(v: Any) -> bool:
    """Recorded exactly: within the limits, text keys only, strings that are valid UTF-8."""
    if must_stand_in(v):
        return False
    for x in _walk(v):
        if isinstance(x, dict) and not all(type(k) is str for k in x):
            return False
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def roundtrip(fields: dict[str, Any]) -> dict[str, Any]:
    body, digest = R.build(fields, 7, 1_700_000_000_000_000, PREV)
    assert len(body) <= R.MAX_RECORD
    rec = R.check(body)                          # the full reader: decodes, canonical, hash
    fast = R.check_fast(body)
    assert fast is None or fast == rec
    assert rec["hash"] == digest and rec["seq"] == 7 and rec["prev"] == PREV
    json.dumps(R.jsonable(rec), allow_nan=False)   # and export can always print it as JSON
    return {k: v for k, v in rec.items() if k not in R.RESERVED}


def stand_in(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("_unrecorded"), str) and len(v.get("sha256", "")) == 64


@pytest.mark.parametrize("depth", [MAX_RECORD_DEPTH - 1, MAX_RECORD_DEPTH, AUDIT_DECODE_DEPTH - 1,
                                   AUDIT_DECODE_DEPTH, 410, 600, 5000, 200_000])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deep_arguments_at_and_past_the_limit(depth: int, kind: str) -> None:
    args = nest(depth, "payload", kind)
    out = roundtrip({"kind": "call", "agent": "mallory", "args": args, "outcome": {"status": "error"}})
    assert out["agent"] == "mallory" and out["outcome"] == {"status": "error"}   # the rest stays exact
    if depth <= MAX_RECORD_DEPTH - 1:            # args sit one level below the record map
        assert out["args"] == args
    else:
        a = out["args"]
        assert stand_in(a) and "too deep" in a["_unrecorded"]
        assert len(a["prefix"]) <= REFUSED_ARGS_PREFIX_BYTES and a["prefix"].startswith("[" if kind == "list" else "{")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1 << 70, -(1 << 80), 10 ** 5000],
                         ids=["nan", "inf", "-inf", "2^70", "-2^80", "10^5000"])
def test_unencodable_leaves_become_a_stand_in(bad: Any) -> None:
    out = roundtrip({"kind": "call", "args": {"x": [1, {"y": bad}]}, "agent": "a"})
    assert stand_in(out["args"]) and out["agent"] == "a"


def test_a_record_too_large_is_shrunk_not_refused() -> None:
    out = roundtrip({"kind": "x", "outcome": {"error": "e" * (3 << 20)}, "agent": "a"})
    assert stand_in(out["outcome"]) and out["agent"] == "a"


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 66), 1 << 66), st.floats(allow_nan=True),
                  st.text(max_size=8), st.binary(max_size=8), st.sampled_from([10 ** 30, "\ud800", math.inf]))
_key = st.one_of(st.text(max_size=6), st.integers(-3, 3))
_tree = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_key, c, max_size=3)),
                     max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tree, st.integers(0, AUDIT_DECODE_DEPTH + 20), st.sampled_from(["list", "dict"]))
def test_anything_the_writer_accepts_the_reader_decodes(tree: Any, extra: int, kind: str) -> None:
    args = nest(extra, tree, kind)
    out = roundtrip({"kind": "call", "args": args, "agent": "x"})
    if exact(args):
        assert out["args"] == args
    elif must_stand_in(args):
        assert stand_in(out["args"])

