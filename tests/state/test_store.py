"""Agent state's pure checks and its SQLite store (real files, real connections, real threads)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.capabilities.statestore import (
    Limits,
    StateStore,
    Usage,
    check_key,
    check_prefix,
    check_quota,
    check_version,
    decode_cursor,
    encode_cursor,
    encode_value,
    prefix_bounds,
)
from stockade.core.errors import StockadeError
from stockade.core.home import Home
from stockade.core.limits import MAX_STATE_VALUE_DEPTH
from stockade.core.types import TIERS
from stockade.policy.engine import evaluate
from stockade.policy.loader import TEMPLATES_DIR, load_home
from stockade.policy.setup import catalog


def _fails(type_: str, fn: Any, *a: Any) -> StockadeError:
    with pytest.raises(StockadeError) as e:
        fn(*a)
    assert e.value.type == type_, e.value
    return e.value


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "stockade.db"


def _store(path: Path, clock: Clock | None = None, **limits: int) -> StateStore:
    return StateStore(path, Limits(**limits), clock or Clock())


# -- pure checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["", " ", "a b", "a\x00", "é", "ключ", "a*", "a%", "a?", "a#", "a\\b", "'", '"',
                                 "a\n", "x" * 257, "\x7f"])
def test_malformed_keys_are_refused(key: str) -> None:
    assert _fails("InvalidInput", check_key, key).data["argument"] == "key"


@pytest.mark.parametrize("key", [1, None, ["a"], {"k": 1}, True])
def test_keys_of_the_wrong_type_are_refused(key: Any) -> None:
    _fails("InvalidInput", check_key, key)


@pytest.mark.parametrize("key", ["a", "x" * 256, "notes/2026-01-01", "A.b_c:d@e+f=g,h~i-j", "../etc/passwd"])
def test_well_formed_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_prefix_may_be_empty_but_not_malformed() -> None:
    assert check_prefix("") == ""
    _fails("InvalidInput", check_prefix, "a b")
    _fails("InvalidInput", check_prefix, "x" * 257)


KEYS = st.text(alphabet="ab/.-~Z0", min_size=1, max_size=6)


@given(prefix=st.text(alphabet="ab/.-~Z0", max_size=3), keys=st.sets(KEYS, max_size=30),
       after=st.none() | KEYS)
def test_prefix_bounds_hold_exactly_the_keys_with_the_prefix_after_the_cursor(
        prefix: str, keys: set[str], after: str | None) -> None:
    low, high = prefix_bounds(prefix, after)
    inside = {k for k in keys if k >= low and (high is None or k < high)}
    assert inside == {k for k in keys if k.startswith(prefix) and (after is None or k > after)}


def test_values_are_canonical_json() -> None:
    assert encode_value({"b": 1, "a": [True, None, "é"]}, 100) == '{"a":[true,null,"é"],"b":1}'


def test_value_size_counts_canonical_utf8_bytes() -> None:
    assert encode_value("a" * 8, 10) == '"aaaaaaaa"'                    # 10 bytes: at the limit
    e = _fails("InvalidInput", encode_value, "é" * 5, 11)                 # 12 bytes
    assert e.data["reason"] == "too_large" and e.data["bytes"] == 12


def test_value_depth_is_bounded_by_core_limits() -> None:
    ok: Any = 1
    for _ in range(MAX_STATE_VALUE_DEPTH):
        ok = [ok]
    encode_value(ok, 1 << 20)
    assert _fails("InvalidInput", encode_value, [ok], 1 << 20).data["reason"] == "depth"
    assert _fails("InvalidInput", encode_value, {"a": ok}, 1 << 20).data["reason"] == "depth"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"x", object(), "\ud800", {"\udfff": 1},
                                   pytest.param(10 ** 5000, id="huge-int"), {(1,): 1}])
def test_values_that_are_not_json_are_refused(value: Any) -> None:
    _fails("InvalidInput", encode_value, value, 1 << 20)


@given(key=st.from_regex(r"\A[A-Za-z0-9_.:/@+=,~-]{1,256}\Z"))
def test_cursor_round_trips(key: str) -> None:
    assert decode_cursor(encode_cursor(key)) == key


@pytest.mark.parametrize("cursor", ["", "abc", "c1.", "c1.!!!!", "c1." + "A" * 700, 5, None,
                                    "c1.YSBi",           # "a b": decodes, but is not a key
                                    encode_cursor("ab") + "=", "c2." + encode_cursor("ab")[3:]])
def test_forged_cursors_are_refused(cursor: Any) -> None:
    _fails("InvalidInput", decode_cursor, cursor)


def test_compare_and_set_rules() -> None:
    check_version(None, None, "k")
    check_version(None, 0, "k")
    check_version(7, 7, "k")
    check_version(7, None, "k")
    assert _fails("Conflict", check_version, 7, 0, "k").data == {"key": "k", "expected_version": 0,
                                                                  "current_version": 7}
    assert _fails("Conflict", check_version, None, 3, "k").data["current_version"] == 0
    _fails("Conflict", check_version, 7, 6, "k")
    for bad in (-1, True, "7", 7.0):
        _fails("InvalidInput", check_version, 7, bad, "k")


def test_quota_rules() -> None:
    lim = Limits(max_keys=2, max_bytes=100, max_value_bytes=50)
    check_quota(Usage(1, 50), None, 50, lim)                          # second key, exactly full
    e = _fails("QuotaExceeded", check_quota, Usage(2, 10), None, 1, lim)
    assert e.data["quota"] == "keys" and e.data["limit"] == 2
    check_quota(Usage(2, 10), 5, 5, lim)                              # replacing needs no new key
    e = _fails("QuotaExceeded", check_quota, Usage(1, 90), None, 11, lim)
    assert e.data["quota"] == "bytes" and e.data["limit"] == 100
    check_quota(Usage(2, 150), 60, 40, lim)                           # over (the owner lowered it): shrinking ok
    _fails("QuotaExceeded", check_quota, Usage(2, 150), 40, 41, lim)  # ... growing is not


# -- the store -----------------------------------------------------------------------------------
def test_set_get_list_delete_and_versions_never_repeat(db_path: Path) -> None:
    s = _store(db_path)
    a = s.set("alice", "k", {"n": 1})
    b = s.set("alice", "k", {"n": 2}, expected_version=a.version)
    assert b.version > a.version
    got = s.get("alice", "k")
    assert got is not None and got.value == {"n": 2} and got.version == b.version
    assert s.delete("alice", "k", expected_version=b.version) == b.version
    assert s.get("alice", "k") is None and s.delete("alice", "k") is None
    c = s.set("alice", "k", 1, expected_version=0)
    assert c.version > b.version                              # a re-created key never reuses a version
    _fails("Conflict", s.set, "alice", "k", 2, a.version)     # ... so an old reader's CAS fails (no ABA)


def test_agents_are_separate_namespaces(db_path: Path) -> None:
    s = _store(db_path)
    s.set("alice", "secret", "alice's")
    assert s.get("bob", "secret") is None
    assert s.list("bob") == ([], None)
    assert s.delete("bob", "secret") is None
    s.set("bob", "secret", "bob's")
    assert s.get("alice", "secret").value == "alice's"        # type: ignore[union-attr]
    assert s.usage("alice") == Usage(1, len("secret") + len('"alice\'s"'))


def test_list_pages_with_a_cursor_and_a_prefix(db_path: Path) -> None:
    s = _store(db_path)
    for i in range(25):
        s.set("alice", f"notes/{i:02d}", i)
    s.set("alice", "notes0", 0)                                 # sorts right after notes/..., no prefix match
    s.set("alice", "other", 0)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = s.list("alice", "notes/", 10, cursor)
        seen += [e.key for e in page]
        if cursor is None:
            break
    assert seen == [f"notes/{i:02d}" for i in range(25)]
    assert [e.key for e in s.list("alice", "", 1000)[0]][-2:] == ["notes0", "other"]
    _fails("InvalidInput", s.list, "alice", "", 0)
    _fails("InvalidInput", s.list, "alice", "", 1001)


def test_expired_keys_are_invisible_then_deleted(db_path: Path) -> None:
    clock = Clock()
    s = _store(db_path, clock)
    old = s.set("alice", "tmp", "x", ttl_seconds=10)
    s.set("alice", "keep", "y")
    clock.t += 9.999
    assert s.get("alice", "tmp") is not None
    clock.t += 0.001
    assert s.get("alice", "tmp") is None
    assert [e.key for e in s.list("alice")[0]] == ["keep"]
    assert s.usage("alice").keys == 1                           # the quota does not count it
    new = s.set("alice", "tmp", "z", expected_version=0)        # absent for compare-and-set
    assert new.version > old.version and new.expires_at is None  # a set without ttl keeps the key


def test_the_sweep_deletes_every_agents_expired_keys_and_the_counters_follow(db_path: Path) -> None:
    clock = Clock()
    s = _store(db_path, clock)
    for agent in ("alice", "bob"):
        for i in range(5):
            s.set(agent, f"k{i}", i, ttl_seconds=1)
    clock.t += 2
    assert s.sweep() == 10
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT COUNT(*) FROM state_kv").fetchone()[0] == 0
    assert raw.execute("SELECT SUM(keys), SUM(bytes) FROM state_usage").fetchone() == (0, 0)


def test_quota_is_checked_against_live_keys(db_path: Path) -> None:
    clock = Clock()
    s = _store(db_path, clock, max_keys=3, max_bytes=1024, max_value_bytes=512)
    for i in range(3):
        s.set("alice", f"k{i}", i)
    assert _fails("QuotaExceeded", s.set, "alice", "k3", 3).data["quota"] == "keys"
    s.set("alice", "k0", "replaced")                            # replacing needs no new key
    s.set("bob", "k3", 3)                                       # quotas are per agent
    s.delete("alice", "k1")
    s.set("alice", "k3", 3)
    assert _fails("QuotaExceeded", s.set, "alice", "k9", "x" * 500).data["quota"] == "keys"
    big = _store(db_path, clock, max_keys=100, max_bytes=1024, max_value_bytes=512)
    big.set("carol", "a", "x" * 500)
    big.set("carol", "b", "x" * 500)
    assert _fails("QuotaExceeded", big.set, "carol", "c", "x" * 100).data["quota"] == "bytes"
    assert big.usage("carol").keys == 2                         # nothing was written


def test_expired_keys_free_the_quota(db_path: Path) -> None:
    clock = Clock()
    s = _store(db_path, clock, max_keys=2, max_bytes=1024, max_value_bytes=512)
    s.set("alice", "a", 1, ttl_seconds=5)
    s.set("alice", "b", 1)
    _fails("QuotaExceeded", s.set, "alice", "c", 1)
    clock.t += 5
    s.set("alice", "c", 1)


OPS = st.lists(st.tuples(st.sampled_from(["set", "delete", "tick"]), st.sampled_from(["a", "b", "c", "d"]),
                         st.integers(0, 40), st.sampled_from([None, 1, 3])), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_usage_counters_always_equal_the_live_rows(tmp_path: Path, ops: list[tuple[str, str, int, Any]]) -> None:
    path = tmp_path / f"p{abs(hash(json.dumps(ops)))}.db"
    clock = Clock()
    s = _store(path, clock, max_keys=3, max_bytes=200, max_value_bytes=100)
    for op, key, n, ttl in ops:
        try:
            if op == "set":
                s.set("alice", key, "x" * n, ttl_seconds=ttl)
            elif op == "delete":
                s.delete("alice", key)
            else:
                clock.t += 1
        except StockadeError as e:
            assert e.type == "QuotaExceeded"
        live = s.list("alice", "", 1000)[0]
        assert s.usage("alice") == Usage(len(live), sum(e.bytes for e in live))
        assert len(live) <= 3 and sum(e.bytes for e in live) <= 200
    s.close()
    path.unlink()


def test_concurrent_compare_and_set_across_connections_loses_nothing(db_path: Path) -> None:
    """Two stores are two SQLite connections (as two gateway processes would be): increments by
    read + compare-and-set from threads on both must all land, each exactly once."""
    stores = [_store(db_path), _store(db_path)]
    stores[0].set("alice", "n", 0)
    workers, per = 8, 25
    conflicts = [0] * workers

    def inc(i: int) -> None:
        s = stores[i % 2]
        done = 0
        while done < per:
            cur = s.get("alice", "n")
            assert cur is not None
            try:
                s.set("alice", "n", cur.value + 1, expected_version=cur.version)
                done += 1
            except StockadeError as e:
                assert e.type == "Conflict"
                conflicts[i] += 1

    threads = [threading.Thread(target=inc, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = stores[1].get("alice", "n")
    assert final is not None and final.value == workers * per


def test_create_only_is_won_by_exactly_one_writer(db_path: Path) -> None:
    stores = [_store(db_path) for _ in range(4)]
    won: list[int] = []
    barrier = threading.Barrier(len(stores))

    def create(i: int) -> None:
        barrier.wait()
        try:
            stores[i].set("alice", "lock", i, expected_version=0)
            won.append(i)
        except StockadeError as e:
            assert e.type == "Conflict"

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert stores[0].get("alice", "lock").value == won[0]     # type: ignore[union-attr]


def test_a_refused_write_changes_nothing(db_path: Path) -> None:
    s = _store(db_path, max_keys=10, max_bytes=1024, max_value_bytes=64)
    v = s.set("alice", "k", "before")
    for bad in (lambda: s.set("alice", "k", "x" * 100),
                lambda: s.set("alice", "k", "after", expected_version=v.version + 1),
                lambda: s.set("alice", "bad key", 1),
                lambda: s.set("alice", "k", 1, ttl_seconds=0),
                lambda: s.set("alice", "k", 1, ttl_seconds=-1),
                lambda: s.delete("alice", "k", expected_version=0)):
        with pytest.raises(StockadeError):
            bad()
    got = s.get("alice", "k")
    assert got is not None and (got.value, got.version) == ("before", v.version)
    assert s.usage("alice") == Usage(1, 1 + len('"before"'))


# -- default tiers of the shipped templates -----------------------------------------------------
@pytest.mark.parametrize(("template", "reads", "writes"), [
    ("personal", "autonomous", "autonomous"),
    ("strict", "autonomous", "approval_required"),
    ("open", "autonomous", "autonomous"),
])
def test_templates_give_state_their_documented_tiers(tmp_path: Path, template: str, reads: str,
                                                     writes: str) -> None:
    home = Home(tmp_path / "home")
    (home.policies).mkdir(parents=True)
    (home.policies / "org.yaml").write_text((TEMPLATES_DIR / f"{template}.yaml").read_text())
    policy = load_home(home, catalog())
    args = {"state.get": {"key": "k"}, "state.list": {}, "state.set": {"key": "k", "value": 1},
            "state.delete": {"key": "k"}}
    tiers = {cap: TIERS[evaluate(policy, "agent", cap, a).tier] for cap, a in args.items()}
    assert tiers == {"state.get": reads, "state.list": reads, "state.set": writes, "state.delete": writes}
    # the system layer blocks naming another agent, whatever the template says
    assert TIERS[evaluate(policy, "agent", "state.get", {"key": "k", "agent": "other"}).tier] == "blocked"
