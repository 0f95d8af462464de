"""process.run outside the sandbox (the handler's own guarantees): env, cwd, stdin, caps,
timeouts that kill the whole process group, background children, structured errors.

Fork and memory bombs are the cgroup's job (tests/sandbox); here the handler must only never
hang and always answer with a structured result or error.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from stockade.capabilities.impl import process as pr
from stockade.core.errors import StockadeError

from .conftest import Env


def run(env: Env, args: dict[str, Any], **profile: Any) -> dict[str, Any]:
    out = pr.process_run(env.ctx(**profile), args)
    json.dumps(out)
    return out


def fails(env: Env, args: dict[str, Any], types: tuple[str, ...], **profile: Any) -> StockadeError:
    before = env.snapshot()
    with pytest.raises(StockadeError) as ei:
        run(env, args, **profile)
    assert ei.value.type in types, ei.value
    assert env.snapshot() == before
    return ei.value


def _procs_with(marker: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{p}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            found.append(int(p))
    return found


def _wait_gone(marker: str, within: float = 5.0) -> list[int]:
    end = time.monotonic() + within
    while time.monotonic() < end:
        left = _procs_with(marker)
        if not left:
            return []
        time.sleep(0.05)
    return _procs_with(marker)


def test_exit_code_output_and_cwd(env: Env, mode: str) -> None:
    out = run(env, {"argv": ["sh", "-c", "pwd; echo oops >&2; exit 3"], "cwd": "dir"})
    assert out["exit_code"] == 3 and out["signal"] is None
    assert out["stdout"] == f"{env.ws / 'dir'}\n" and out["stderr"] == "oops\n"
    assert not out["stdout_truncated"] and out["duration_ms"] >= 0
    out = run(env, {"argv": ["cat", "file.txt"], "cwd": "/workspace/dir/"})
    assert out["stdout"] == "hello\nworld\n"
    out = run(env, {"argv": ["sh", "-c", "pwd; echo scratch > s; cat s"], "cwd": "/tmp"})
    assert out["stdout"] == f"{env.base / 'tmp'}\nscratch\n"
    assert run(env, {"argv": ["cat", "readme"], "cwd": "/shared"})["stdout"] == "shared\n"


def test_cwd_is_resolved_beneath_the_workspace(env: Env, mode: str) -> None:
    for cwd, t in [("out", "PathDenied"), ("..", "PathDenied"), ("/etc", "PathDenied"), ("root", "PathDenied"),
                   ("dir/sneaky", "PathDenied"), ("nothere", "FileNotFound"), ("a\x00", "InvalidInput")]:
        fails(env, {"argv": ["sh", "-c", "echo pwned > f"], "cwd": cwd}, (t,))
    fails(env, {"argv": ["true"], "cwd": "dir/file.txt"}, ("FileNotFound", "InvalidInput"))
    assert os.getcwd() != str(env.ws / "dir")      # our own cwd was restored


def test_minimal_environment(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_GATEWAY_SECRET", "must-not-leak")
    out = run(env, {"argv": ["env"], "env": {"FOO": "bar", "PATH": "/usr/bin:/bin"}})
    lines = dict(line.split("=", 1) for line in out["stdout"].splitlines())
    assert "STOCKADE_GATEWAY_SECRET" not in lines and "must-not-leak" not in out["stdout"]
    assert lines["FOO"] == "bar" and lines["PATH"] == "/usr/bin:/bin" and lines["HOME"] == "/workspace"
    assert set(lines) <= {"FOO", "PATH", "HOME", "LANG", "TMPDIR", "USER", "LOGNAME", "PWD"}
    for bad in [{"A=B": "x"}, {"": "x"}, {"1X": "x"}, {"X": "a\x00b"}, {"X": 3}]:
        fails(env, {"argv": ["true"], "env": bad}, ("InvalidInput",))


def test_stdin(env: Env) -> None:
    assert run(env, {"argv": ["cat"], "stdin": "line\n"})["stdout"] == "line\n"
    big = "x" * 600_000
    out = run(env, {"argv": ["wc", "-c"], "stdin": big})
    assert out["stdout"].strip() == "600000"
    out = run(env, {"argv": ["true"], "stdin": big})       # never read: EPIPE is not an error
    assert out["exit_code"] == 0


def test_bad_argv(env: Env) -> None:
    for argv in [[], [""], ["a\x00b"], "ls", [1], ["x" * 300_000]]:
        fails(env, {"argv": argv}, ("InvalidInput",))
    e = fails(env, {"argv": ["no-such-command-xyz"]}, ("FileNotFound",))
    assert e.data["reason"] == "command_not_found"
    fails(env, {"argv": ["./dir/file.txt"]}, ("PathDenied", "InvalidInput"))   # not executable
    for t in [0, -1, "5", True]:
        fails(env, {"argv": ["true"], "timeout": t}, ("InvalidInput",))


def test_signal_is_reported(env: Env) -> None:
    out = run(env, {"argv": ["sh", "-c", "kill -9 $$"]})
    assert out["exit_code"] is None and out["signal"] == 9


def test_timeout_kills_the_whole_group(env: Env) -> None:
    marker = f"71{os.getpid()}.5"
    t = time.monotonic()
    e = fails(env, {"argv": ["sh", "-c", f"echo started; sleep {marker} & sleep {marker}"], "timeout": 0.5},
              ("Timeout",))
    assert time.monotonic() - t < 5
    assert e.data["stdout_tail"] == "started\n" and e.data["timeout_s"] == 0.5
    assert _wait_gone(marker) == []


def test_many_children_are_all_killed(env: Env) -> None:
    marker = f"72{os.getpid()}.5"
    with pytest.raises(StockadeError) as ei:
        run(env, {"argv": ["sh", "-c", f"for i in $(seq 150); do sleep {marker} & done; wait"], "timeout": 1.5})
    assert ei.value.type == "Timeout"
    assert _wait_gone(marker) == []


def test_background_children_do_not_outlive_the_call(env: Env) -> None:
    marker = f"73{os.getpid()}.5"
    t = time.monotonic()
    out = run(env, {"argv": ["sh", "-c", f"sleep {marker} & echo bg"], "timeout": 20})
    assert out["exit_code"] == 0 and out["stdout"] == "bg\n"
    assert time.monotonic() - t < 5                 # did not wait for the background sleep
    assert _wait_gone(marker) == []


def test_command_that_closes_its_output_is_still_waited_for(env: Env) -> None:
    out = run(env, {"argv": ["sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 4"]})
    assert out["exit_code"] == 4 and out["duration_ms"] >= 250


def test_timeout_is_capped_by_the_profile(env: Env) -> None:
    t = time.monotonic()
    e = fails(env, {"argv": ["sleep", "30"], "timeout": 3600}, ("Timeout",), timeout=1.0)
    assert e.data["timeout_s"] <= 0.95 and time.monotonic() - t < 5


def test_output_flood_is_capped_and_drained(env: Env) -> None:
    out = run(env, {"argv": ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' 'A'; echo done >&2"]},
              max_output_bytes=65536)
    assert out["stdout_truncated"] and out["stdout_bytes"] == 5_000_000 and out["exit_code"] == 0
    assert out["stderr"] == "done\n"
    assert len(json.dumps(out)) <= 65536
    out = run(env, {"argv": ["sh", "-c", "head -c 200000 /dev/zero"]}, max_output_bytes=65536)   # NULs: 6x
    assert len(json.dumps(out)) <= 65536 and out["stdout_truncated"]


def test_invalid_utf8_output_is_replaced(env: Env) -> None:
    out = run(env, {"argv": ["printf", "\\377ok"]})
    assert out["stdout"] == "\ufffdok"


@settings(max_examples=200, deadline=None)
@given(req=hs.none() | hs.floats(min_value=0.001, max_value=1e6), prof=hs.floats(min_value=0.1, max_value=1e5),
       left=hs.none() | hs.floats(min_value=0.0, max_value=1e5))
def test_effective_timeout_stays_inside_the_sandbox_deadline(req: float | None, prof: float,
                                                             left: float | None) -> None:
    t = pr.effective_timeout(req, prof, left)
    hard = min(prof, left) if left is not None else prof
    assert t > 0
    assert t <= max(0.05, hard - min(1.0, max(0.05, hard * 0.1)))
    if req is not None:
        assert t <= max(req, 0.05)


@settings(max_examples=100, deadline=None)
@given(out=hs.text(max_size=3000), err=hs.text(max_size=3000), budget=hs.integers(min_value=300, max_value=5000))
def test_fit_output(out: str, err: str, budget: int) -> None:
    r = pr.fit_output({"stdout": out, "stderr": err, "stdout_truncated": False, "stderr_truncated": False},
                      budget)
    assert len(json.dumps(r)) <= budget
    assert out.startswith(r["stdout"]) and err.startswith(r["stderr"])
    assert r["stdout_truncated"] == (r["stdout"] != out)
