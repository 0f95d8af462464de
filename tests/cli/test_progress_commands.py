"""Every long CLI command shows progress on a terminal and nothing on a pipe or with --json
(issue 18: long work was silent). Each command runs twice for real: with stderr on a pseudo-TTY
(the pty module), where the progress line and its closing `done in` must appear, and through
pipes, where stderr must stay empty and stdout must be the same bytes as on the terminal run.

The bar waits `progress.DELAY` (1 s) before drawing so quick runs stay quiet; the small home
here finishes faster than that, so the terminal runs set DELAY to 0 in the child process (a
switch that lives in this test, not in what ships).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import cli_json, run_cli

EXAMPLE_PACK = Path(__file__).resolve().parents[2] / "examples" / "packs" / "textutils"
NO_DELAY = "import sys, stockade.cli.progress as p; p.DELAY = 0.0; from stockade.cli.main import cli; cli()"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped home with a few dozen audit records and a signed checkpoint."""
    h = tmp_path_factory.mktemp("progress") / "home"
    run_cli("init", home=h)
    for name in ("alice", "bob", "carol"):
        run_cli("agent", "create", name, home=h)
        run_cli("agent", "rotate", name, home=h)
    run_cli("audit", "checkpoint", "export", "--fresh", home=h)
    return h


def on_tty(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run `stockade ARGS` with stderr on a pty and stdout on a pipe: (exit code, stdout, tty text)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", NO_DELAY, *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    tty = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:     # EIO: the child closed its end
                    break
                if not chunk:
                    break
                tty += chunk
            elif p.poll() is not None:
                break
        assert p.stdout is not None
        out = p.stdout.read().decode()
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return p.returncode, out, tty.decode(errors="replace")


def piped(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_DELAY, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def check(args: list[str], title: str, ok: tuple[int, ...] = (0,), same: bool = True) -> str:
    """The terminal run shows `title` and `done in`; the piped run prints nothing on stderr;
    stdout is the same either way (unless `same` is off: the output holds timings). Returns the
    terminal text."""
    code, out, tty = on_tty(*args)
    assert code in ok, tty
    assert title in tty and "done in" in tty, tty
    p = piped(*args)
    assert p.returncode == code and p.stderr == "", p.stderr
    assert p.stdout == out if same else p.stdout.splitlines()[-1] == out.splitlines()[-1]
    return tty


def check_json_on_tty(args: list[str]) -> None:
    """--json on a terminal: the machine output alone, nothing drawn."""
    code, out, tty = on_tty(*args, "--json")
    assert code == 0 and tty == "", tty
    json.loads(out.splitlines()[0])


def test_audit_verify(home: Path) -> None:
    tty = check(["audit", "verify", "--home", str(home)], "audit verify")
    check_json_on_tty(["audit", "verify", "--home", str(home)])
    assert "intact" not in tty, "the verdict goes to stdout, the progress to the terminal's stderr"


def test_audit_export_to_a_pipe_and_to_a_file(home: Path, tmp_path: Path) -> None:
    check(["audit", "export", "--home", str(home)], "audit export")
    dest = tmp_path / "audit.jsonl"
    code, out, tty = on_tty("audit", "export", "--home", str(home), "-o", str(dest))
    assert code == 0 and out == "" and "audit export" in tty
    lines = dest.read_text().splitlines()
    assert len(lines) >= 6 and all(json.loads(line)["seq"] for line in lines)


def test_audit_reindex_and_query(home: Path) -> None:
    check(["audit", "reindex", "--home", str(home)], "audit reindex")
    check_json_on_tty(["audit", "reindex", "--home", str(home)])
    check(["audit", "query", "--home", str(home), "--kind", "agent.created"], "audit query")


def test_audit_replay(home: Path, tmp_path: Path) -> None:
    cand = tmp_path / "candidate"
    shutil.copytree(home / "policies", cand)
    check(["audit", "replay", "--home", str(home), "--policy", str(cand)], "audit replay")


def test_doctor_verify_install(home: Path) -> None:
    tty = check(["doctor", "--verify-install", "--home", str(home)], "doctor", ok=(0, 1), same=False)
    assert "hashing every installed file" in tty


def test_pack_install(home: Path, tmp_path: Path) -> None:
    keys = cli_json("pack", "keygen", "--out", str(tmp_path / "pub"))
    cli_json("pack", "trust", keys["pub"], "--name", "example", home=home)
    d = tmp_path / "textutils"
    shutil.copytree(EXAMPLE_PACK, d)
    cli_json("pack", "sign", str(d), "--key", keys["key"])
    code, out, tty = on_tty("pack", "install", str(d), "--home", str(home))
    assert code == 0 and "installed textutils" in out, tty
    assert "pack install" in tty and "done in" in tty, tty
    code, out, tty = on_tty("pack", "install", str(d), "--home", str(home), "--json")
    assert code == 0 and tty == "" and json.loads(out)["pack"] == "textutils"


def test_release_build_failure_shows_no_done_line(tmp_path: Path) -> None:
    """release build draws its line too; when it fails, the error is what the owner sees, not
    `done in`. (A real build needs the network for the locked wheels; tests/release covers it.)"""
    key = tmp_path / "k.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    root = Path(__file__).resolve().parents[2]
    code, out, tty = on_tty("release", "build", "--key", str(key), "--repo", str(root), "--commit", "0" * 40,
                            "--out", str(tmp_path / "out"))
    assert code != 0 and "release build" in tty and "done in" not in tty, tty


def test_quick_work_draws_nothing_and_long_work_draws_a_bar() -> None:
    """Before DELAY nothing is drawn, so a command that ends quickly is as quiet as before; a
    bar whose total is known shows its percentage."""
    from stockade.cli.progress import tracked

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            with tracked("quick", False, tty, delay=30.0) as t:
                t(5, 10)
            with tracked("slow", False, tty, delay=0.0) as t:
                t(5, 10)            # stopping the bar draws it once more before clearing it
            tty.flush()
        text = b""
        while select.select([master], [], [], 0.5)[0]:
            text += os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    shown = text.decode(errors="replace")
    assert "quick" not in shown and "slow" in shown and "50%" in shown and "done in" in shown, shown


def test_export_to_the_terminal_it_draws_on_keeps_every_line_whole(home: Path) -> None:
    """stdout on the same terminal as the bar: each record line is printed above the bar, whole."""
    import re

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", NO_DELAY, "audit", "export", "--home", str(home)],
                         stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    raw = b""
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
        assert p.wait(60) == 0
    finally:
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
    lines = [ln for part in text.split("\n") for ln in part.split("\r") if ln.startswith("{")]
    piped_lines = piped("audit", "export", "--home", str(home)).stdout.splitlines()
    assert [json.loads(ln)["seq"] for ln in lines] == [json.loads(ln)["seq"] for ln in piped_lines]
    assert "audit export: done in" in text


def test_parallel_verify_reports_progress_per_chunk(home: Path) -> None:
    """The multi-core path of verify_dir (logs of 8 MiB and more) tells progress per chunk and, with
    the bar drawn while it forks its workers, gives the same verdict as the sequential pass."""
    from stockade.audit import checkpoint as cp
    from stockade.audit import verify

    pub = cp.load_public(home / "keys")
    seen: list[tuple[int, int]] = []
    serial = verify.verify_dir(home / "audit", pub).to_dict()
    old = verify.PARALLEL_MIN_BYTES
    verify.PARALLEL_MIN_BYTES = 0
    try:
        par = verify.verify_dir(home / "audit", pub, progress=lambda d, t: seen.append((d, t))).to_dict()
    finally:
        verify.PARALLEL_MIN_BYTES = old
    assert par["ok"] and par["records"] == serial["records"] and par["last_seq"] == serial["last_seq"]
    assert seen and seen[-1][0] == seen[-1][1] > 0
    forced = NO_DELAY.replace("p.DELAY = 0.0;", "p.DELAY = 0.0; import stockade.audit.verify as v; "
                                                "v.PARALLEL_MIN_BYTES = 0;")
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", forced, "audit", "verify", "--home", str(home)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    tty = b""
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
        assert p.stdout is not None
        out = p.stdout.read().decode()
        assert p.wait(120) == 0, tty
    finally:
        os.close(master)
    assert out.startswith(f"intact: {serial['records']} records") and b"audit verify: done in" in tty
