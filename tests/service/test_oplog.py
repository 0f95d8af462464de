"""Issue 17, the operational log: one line at start (versions, pid, home, listen addresses), one
per part health change, and the stop, in the text format journald shows by default."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.conftest import start_server

from stockade.gateway.service import health_changes


def _log(home: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(home.parent.glob("serve-*.log")))


def test_start_health_change_and_stop_are_logged(home: Path) -> None:
    live = start_server(home, env={"STOCKADE_LOG_LEVEL": "INFO"})
    try:
        started = re.search(r"INFO stockade: started stockade \S+ \(python [\d.]+, sqlite [\d.]+, pid (\d+)\) "
                            r"for (\S+): gateway http://127\.0\.0\.1:(\d+), dashboard https://127\.0\.0\.1:(\d+)",
                            _log(home))
        assert started, _log(home)
        assert (int(started[1]), started[2]) == (live.proc.pid, str(home))
        assert {int(started[3]), int(started[4])} == {live.ports["gateway"], live.ports["dashboard"]}
        org = home / "policies" / "org.yaml"
        org.write_text(org.read_text() + "\nthis is: [not valid\n")     # the policy part turns degraded
        deadline = time.monotonic() + 120
        while "WARNING stockade: health: policy ok -> degraded" not in _log(home):
            assert time.monotonic() < deadline, _log(home)[-3000:]
            time.sleep(0.3)
    finally:
        assert live.stop(signal.SIGTERM) == 0
    log = _log(home)
    assert "received SIGTERM: stopping" in log and f"stopped stockade (pid {live.proc.pid})" in log


def test_health_changes_are_per_part_and_only_changes() -> None:
    assert health_changes({"a": "ok", "b": "ok"}, {"a": "ok", "b": "ok"}) == []
    assert health_changes({"a": "ok", "b": "degraded"}, {"a": "critical", "b": "ok", "c": "ok"}) == [
        ("a", "ok", "critical"), ("b", "degraded", "ok"), ("c", "none", "ok")]
    assert health_changes({"gone": "ok"}, {}) == [("gone", "ok", "none")]
