"""Progress on a terminal, none otherwise (issue 18: `stockade bench policy` was silent 50 s)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess

from tests.conftest import STOCKADE

from stockade.cli.progress import wanted, working


def test_nothing_without_a_terminal_or_with_json() -> None:
    buf = io.StringIO()
    with working("bench policy", False, buf) as step:
        step("10k rules")
    assert buf.getvalue() == "" and not wanted(False, buf)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert tty.isatty() and wanted(False, tty) and not wanted(True, tty)
    finally:
        os.close(master)
        os.close(slave)


def test_a_terminal_sees_steps_and_the_end() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            with working("bench policy", False, tty) as step:
                step("finished 10k rules")
            tty.flush()
        out = b""
        while True:
            r, _, _ = select.select([master], [], [], 0.5)
            if not r:
                break
            out += os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    text = out.decode(errors="replace")
    assert "bench policy" in text and "done in" in text and "finished 10k rules" in text, text


def test_bench_policy_piped_json_has_no_progress() -> None:
    """The real command through pipes with --json: stdout is exactly the JSON document and stderr
    is empty (the terminal side is the test above, on a real pty)."""
    piped = subprocess.run([*STOCKADE, "bench", "policy", "--quick", "--json"], capture_output=True, text=True,
                           timeout=600)
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout.lstrip().startswith("{")
