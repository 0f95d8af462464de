"""The clock does not decide what history exists (issue 23 item 7).

Pure: `retention.plan` on given clock values. End to end: a real `stockade serve` whose wall
clock is moved by libfaketime (LD_PRELOAD; the boot-time clock left real), never a mock inside
the code under test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from tests.audit.helpers import day_us
from tests.conftest import cli_json, need, run_cli, start_server

from stockade.audit.retention import DAY_US, SKEW_TOLERANCE_US, Anchor, plan

pytestmark = pytest.mark.xdist_group("audit-cli")

FILES = ["2026-01-01.log", "2026-03-01.log", "2026-05-01.log", "2026-05-20.log"]
ANCHOR = Anchor(day_us("2026-05-20", 3600), 1000.0)


def test_a_clock_that_jumped_ahead_prunes_nothing_more_than_the_log_time_allows() -> None:
    wall = ANCHOR.ts_us + 100 * DAY_US                       # 100 days ahead, 10 s of uptime
    p = plan(FILES, "2026-05-20.log", wall, ANCHOR, 1010.0, 90)
    assert p.files == ("2026-01-01.log",)                    # only what was past retention anyway
    assert p.clock_disagrees and p.skew_us > 99 * DAY_US
    assert p.trusted_us == ANCHOR.ts_us + 10_000_000


def test_time_that_really_passed_prunes() -> None:
    boot = 1000.0 + 60 * 86400                               # 60 days of real uptime
    p = plan(FILES, "2026-05-20.log", ANCHOR.ts_us + 60 * DAY_US, ANCHOR, boot, 90)
    assert p.files == ("2026-01-01.log", "2026-03-01.log") and not p.clock_disagrees


def test_a_clock_behind_the_log_prunes_less_and_the_head_is_never_pruned() -> None:
    p = plan(FILES, "2026-03-01.log", ANCHOR.ts_us - 200 * DAY_US, ANCHOR, 1010.0, 1)
    assert p.files == () and p.clock_disagrees
    p = plan(FILES, "2026-05-01.log", ANCHOR.ts_us, ANCHOR, 1000.0, 1)
    assert p.files == ("2026-01-01.log", "2026-03-01.log")   # not the head's file, nor later ones
    assert abs(plan(FILES, None, ANCHOR.ts_us + SKEW_TOLERANCE_US // 2, ANCHOR, 1000.0, 90).skew_us) \
        <= SKEW_TOLERANCE_US


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def faked(offset: str) -> dict[str, str]:
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}


def log_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "audit").glob("????-??-??.log"))


def test_serve_with_a_clock_100_days_ahead_prunes_nothing_and_says_so(tmp_path: Path) -> None:
    need(os.path.exists(FAKETIME), "needs libfaketime (apt-get install faketime)")
    home = tmp_path / "home"
    run_cli("init", home=home)
    cfg = yaml.safe_load((home / "stockade.yaml").read_text())
    cfg["audit"] = {"retention_days": 90}
    (home / "stockade.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("agent", "create", "old", home=home, env=faked("-120d"))    # a day file really past retention
    old_day = log_files(home)[0]
    run_cli("agent", "create", "today", home=home)
    assert len(log_files(home)) == 2

    server = start_server(home)                                          # true clock: the old file goes
    try:
        for _ in range(100):
            if len(log_files(home)) == 1:
                break
            time.sleep(0.1)
    finally:
        assert server.stop() == 0
    today = log_files(home)
    assert today != [] and old_day not in today
    v = cli_json("audit", "verify", home=home)
    assert v["ok"] and v["start"] == "checkpoint", v
    assert any("pruned" in n and old_day in n for n in v["notes"]), v["notes"]
    pruned = cli_json("audit", "query", "--kind", "audit.pruned", home=home)["records"]
    assert [r["file"] for r in pruned] == [old_day]

    server = start_server(home, env=faked("+100d"))                      # one restart 100 days ahead
    try:
        key = server.agent("jumper")
        assert "result" in server.invoke(key, "system.time")
        time.sleep(1.0)                                                  # the retention pass at start
    finally:
        assert server.stop() == 0
    assert set(today) <= set(log_files(home))                            # nothing more was pruned
    v = cli_json("audit", "verify", home=home)
    assert v["ok"] and v["first_seq"] == pruned[0]["last_seq"] + 1, v
    skew = cli_json("audit", "query", "--kind", "audit.clock_skew", home=home)["records"]
    assert len(skew) == 1 and skew[0]["skew_seconds"] > 99 * 86400
    assert len(cli_json("audit", "query", "--kind", "audit.pruned", home=home)["records"]) == 1
