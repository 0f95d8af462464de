"""`/metrics` on the dashboard port: Prometheus text format, admin token required, fed by real
calls through the real gateway (calls by capability/tier/outcome, stage latencies, refusals,
approvals pending and decided, audit head and bytes, part health)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import cli_quick, quick_json, start_server

from stockade.supervision.metrics import call_labels


def _scrape(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}/metrics", headers=headers, verify=False, timeout=60)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_admin_token_and_count_real_calls(home: Path) -> None:
    live = start_server(home)
    try:
        url = f"https://127.0.0.1:{live.ports['dashboard']}"
        assert _scrape(url, None).status_code == 401
        assert _scrape(url, "stk_admin_not_the_token").status_code == 401
        token = quick_json("admin", "token", home=home)["token"]
        key = live.agent("m1")
        for _ in range(3):
            assert "result" in live.invoke(key, "system.time")
        assert live.invoke(key, "no.such.capability")["error"]
        assert live.invoke(key, "system.time", {"unexpected": 1})["error"]
        resp = _scrape(url, token)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        s = _samples(resp.text)
        tier = json.loads(cli_quick("audit", "query", "--capability", "system.time", "--limit", "1", "--json",
                                    home=home).stdout)
        assert tier  # the calls are in the audit log too
        ok = sum(v for (n, lab), v in s.items() if n == "stockade_calls_total"
                 and dict(lab)["capability"] == "system.time" and dict(lab)["outcome"] == "ok")
        assert ok == 3
        assert _value(s, "stockade_calls_total", capability="(unknown)", tier="none",
                      outcome="CapabilityNotFound") == 1
        assert _value(s, "stockade_calls_refused_total", reason="InvalidInput") == 1
        assert _value(s, "stockade_calls_refused_total", reason="CapabilityNotFound") == 1
        assert _value(s, "stockade_stage_seconds_count", stage="execute") == 3
        assert _value(s, "stockade_stage_seconds_count", stage="validate") == 5
        assert _value(s, "stockade_approvals_pending") == 0
        assert _value(s, "stockade_audit_head_seq") >= 5 and _value(s, "stockade_audit_bytes") > 0
        assert _value(s, "stockade_part_health", part="audit", status="ok") == 1
        assert _value(s, "stockade_start_time_seconds") > 0
    finally:
        live.stop()


def test_call_labels_are_bounded() -> None:
    known = {"system.time"}.__contains__
    rec = {"capability": "system.time", "decision": {"tier": "autonomous"}, "outcome": {"status": "ok"}}
    assert call_labels(rec, known) == ("system.time", "autonomous", "ok")
    assert call_labels({"capability": "nope", "outcome": {"error": "PolicyDenied"}}, known) == \
        ("(unknown)", "none", "PolicyDenied")
    hostile = {"capability": "x" * 500, "decision": {"tier": "made-up"}, "outcome": {"error": "Not\nAType"}}
    assert call_labels(hostile, known) == ("(unknown)", "none", "other")
    assert call_labels({}, known) == ("(unknown)", "none", "other")
