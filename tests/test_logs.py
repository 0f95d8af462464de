"""The one log (core.logs): what the CLI sets up, one handler, text or one JSON object per line."""

from __future__ import annotations

import json
import logging

import pytest
from tests.conftest import run_cli

from stockade.core import logs


@pytest.fixture(autouse=True)
def _restore() -> object:
    level, propagate = logs.log.level, logs.log.propagate
    yield None
    if logs._handler is not None:
        logs.log.removeHandler(logs._handler)
        logs._handler = None
    logs.log.setLevel(level)
    logs.log.propagate = propagate


def test_json_lines_carry_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "json")
    logs.configure("debug", "json")          # idempotent: still one handler, one line per record
    try:
        raise ValueError("boom")
    except ValueError:
        logs.log.exception("call %s failed", "c1")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["level"] == "ERROR" and rec["logger"] == "stockade"
    assert rec["message"].startswith("call c1 failed\nTraceback") and "ValueError: boom" in rec["message"]


def test_level_filters_and_children_share_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("WARNING", "text")
    logs.log.info("not shown")
    logging.getLogger("stockade.part").warning("shown once")
    err = capsys.readouterr().err
    assert "not shown" not in err
    assert err.count("shown once") == 1 and "WARNING stockade.part: shown once" in err


def test_cli_refuses_an_unknown_log_level() -> None:
    p = run_cli("--log-level", "loud", "doctor", check=False)
    assert p.returncode == 2 and "--log-level" in p.stderr
    p = run_cli("doctor", env={"STOCKADE_LOG_LEVEL": "loud"}, check=False)
    assert p.returncode == 2 and "--log-level" in p.stderr
