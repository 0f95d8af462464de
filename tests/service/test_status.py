"""`stockade status`: exit 3 when nothing runs for the home, 0 when every part is healthy, 1 when
one is not; what it reports comes from the running gateway (pid, addresses, parts, vault,
approvals, audit head)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.conftest import run_cli, start_server

from stockade.supervision.status import overall


def test_not_running_is_exit_3(home: Path) -> None:
    p = run_cli("status", home=home, check=False)
    assert p.returncode == 3 and "not running" in p.stdout, (p.stdout, p.stderr)
    p = run_cli("status", "--json", home=home, check=False)
    assert p.returncode == 3 and json.loads(p.stdout)["running"] is False


def test_running_gateway_reports_itself(home: Path) -> None:
    live = start_server(home)
    try:
        key = live.agent("a1")
        assert "result" in live.invoke(key, "system.time")
        p = run_cli("status", "--json", home=home, check=False)
        st = json.loads(p.stdout)
        assert st["running"] is True and st["pid"] == live.proc.pid
        assert st["addresses"]["gateway"].endswith(f":{live.ports['gateway']}")
        assert st["addresses"]["dashboard"].endswith(f":{live.ports['dashboard']}")
        assert {"audit", "policy"} <= set(st["parts"])
        assert st["audit"]["seq"] >= 1 and st["pending_approvals"] == 0
        assert st["vault"]["sealed"] is True
        assert st["uptime_seconds"] >= 0
        # The exit code follows the verdict: 0 healthy, 1 otherwise.
        assert p.returncode == (0 if st["status"] == "ok" else 1), st["health"]
        text = run_cli("status", home=home, check=False)
        assert f"pid {live.proc.pid}" in text.stdout and "head seq" in text.stdout
    finally:
        live.stop()
    assert run_cli("status", home=home, check=False).returncode == 3


def test_a_degraded_part_is_exit_1(home: Path) -> None:
    """A policy file that stops loading while serving leaves the last good policy in force and
    the policy part degraded: status says so and exits 1."""
    live = start_server(home)
    try:
        org = home / "policies" / "org.yaml"
        org.write_text(org.read_text() + "\nthis is: [not valid\n")

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            p = run_cli("status", "--json", home=home, check=False)
            if json.loads(p.stdout)["parts"].get("policy") == "degraded":
                break
            time.sleep(0.5)
        assert p.returncode == 1 and json.loads(p.stdout)["status"] != "ok", p.stdout
    finally:
        live.stop()


def test_overall_verdict() -> None:
    assert overall({"a": {"status": "ok"}, "b": {}}) == "ok"
    assert overall({"a": {"status": "ok"}, "b": {"status": "degraded"}}) == "degraded"
    assert overall({"a": {"status": "critical"}, "b": {"status": "degraded"}}) == "critical"
    assert overall({}) == "ok"


def test_status_of_a_home_that_does_not_exist_is_not_running(tmp_path: Path) -> None:
    p = run_cli("status", home=tmp_path / "nothing", check=False, env={"STOCKADE_HOME": os.devnull})
    assert p.returncode == 3
