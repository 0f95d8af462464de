"""The failed-authentication throttle (edge.authlimit): pure, with the clock passed in."""

from __future__ import annotations

from stockade.edge.authlimit import AuthFailures, presented, source_key


def test_a_source_is_throttled_after_its_burst_and_refills() -> None:
    a = AuthFailures(burst=3, per_second=0.5, window=60)
    for t in range(3):
        assert a.admits("1.2.3.4", t * 0.01) is None
        a.failed("1.2.3.4", "jsonrpc", "unknown", t * 0.01)
    wait = a.admits("1.2.3.4", 0.1)
    assert wait is not None and 1.5 < wait <= 2.0
    assert a.admits("5.6.7.8", 0.1) is None          # another source is not affected
    assert a.admits("1.2.3.4", 2.2) is None          # one token back


def test_a_success_remembers_nothing_and_throttles_nothing() -> None:
    """Valid keys are checked before the throttle (pipeline.admit); success only closes ended windows."""
    a = AuthFailures(burst=1, per_second=0.001)
    assert a.succeeded("127.0.0.1", 0) == []
    assert a.admits("127.0.0.1", 0) is None and not a._sources     # no state for a source that never failed
    a.failed("127.0.0.1", "jsonrpc", "unknown", 1)
    assert a.admits("127.0.0.1", 2) is not None
    assert [r["kind"] for r in a.succeeded("127.0.0.1", 100)] == []  # the first failure was already written
    a.failed("127.0.0.1", "jsonrpc", "unknown", 101)
    a.failed("127.0.0.1", "jsonrpc", "unknown", 102)
    assert [r["kind"] for r in a.succeeded("127.0.0.1", 200)] == ["auth.failures"]


def test_one_description_one_alert_and_one_summary_per_window() -> None:
    a = AuthFailures(burst=2, per_second=0.001, window=60)
    outs = [a.failed("s", "mcp-http", "malformed", t, {"credential": "stk_", "length": 9}) for t in range(5)]
    assert [o.first is not None for o in outs] == [True, False, False, False, False]
    assert [o.burst is not None for o in outs] == [False, True, False, False, False]
    a.throttled("s", "mcp-ws", 6)
    assert a.due(30) == []
    (summary,) = a.due(61)
    assert summary["failures"] == 5 and summary["throttled"] == 1
    assert summary["transports"] == {"mcp-http": 5, "mcp-ws": 1}
    # The next window starts over: a new first record and a new alert.
    o = a.failed("s", "jsonrpc", "unknown", 62)
    assert o.first is not None and o.burst is not None


def test_a_single_failure_has_no_summary_and_flush_closes_open_windows() -> None:
    a = AuthFailures()
    a.failed("s", "jsonrpc", "missing", 0)
    assert a.due(100) == []
    a.failed("t", "jsonrpc", "missing", 0)
    a.failed("t", "jsonrpc", "missing", 1)
    assert [r["source"] for r in a.flush(2)] == ["t"]


def test_sources_are_bounded() -> None:
    a = AuthFailures(max_sources=3)
    for i in range(10):
        a.failed(f"10.0.0.{i}", "jsonrpc", "unknown", 0)
        a.failed(f"10.0.0.{i}", "jsonrpc", "unknown", 0)
    assert len(a._sources) == 3


def test_descriptions_never_hold_the_key() -> None:
    key = "stk_" + "A" * 43
    d = presented(key)
    assert d == {"credential": "stk_", "length": 47} and "A" not in repr(d)
    assert presented(None) == {"credential": "none"}
    assert presented("Basic xyz") == {"credential": "other", "length": 9}


def test_source_keys() -> None:
    assert source_key("127.0.0.1") == "127.0.0.1"
    assert source_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff") == "2001:db8::/64"
    assert source_key("::1") == "::1"
    assert source_key(None) == "unknown"
