"""Hot reload never blocks serving and loads only complete files (issue 14 "also noticed",
issue 23 item 6): a FIFO, a device or a directory in place of a policy file is refused without
being read; a file is loaded only once it has stayed the same for a settle interval; a file that
changes while it is read is refused; the gateway keeps answering while a FIFO sits in policies/."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import start_server

from stockade.core.errors import ConfigError
from stockade.policy import loader
from stockade.policy.setup import ReloadGate

pytestmark = pytest.mark.xdist_group("policy-gateway")


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run fn in a daemon thread; (finished, result-or-exception) after 5 s at most."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(_catch(fn, *args)), daemon=True)
    t.start()
    t.join(5)
    return (not t.is_alive()), (out[0] if out else None)


def _catch(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return e


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "org.yaml"
    os.mkfifo(fifo)
    done, got = _in_thread(loader.read_text, fifo)
    assert done, "reading a FIFO blocked"
    if not done:  # pragma: no cover - unblock the stuck reader
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert isinstance(got, ConfigError) and "not a regular file" in str(got)


@pytest.mark.parametrize("make", ["dir", "dev"])
def test_other_non_regular_files_are_refused(tmp_path: Path, make: str) -> None:
    p = tmp_path / "org.yaml"
    if make == "dir":
        p.mkdir()
    else:
        p.symlink_to("/dev/zero")
    done, got = _in_thread(loader.read_text, p)
    assert done and isinstance(got, ConfigError), got


def test_regular_file_reads(tmp_path: Path) -> None:
    p = tmp_path / "org.yaml"
    p.write_text("version: 1\n")
    assert loader.read_text(p) == "version: 1\n"


def test_gate_waits_for_the_files_to_settle() -> None:
    """A half-written file is seen changing: nothing loads until the same signature has been
    observed for the settle interval (an editor's write-then-rename settles at once)."""
    g = ReloadGate(("a",), settle=1.0)
    assert not g.observe(("a",), 0.0)              # unchanged
    assert not g.observe(("b1",), 10.0)            # first sight of a change: wait
    assert not g.observe(("b2",), 10.5)            # still being written
    assert not g.observe(("b2",), 11.0)            # settled for 0.5 s only
    assert g.observe(("b2",), 11.6)                # settled: load once
    assert not g.observe(("b2",), 12.6)            # and not again
    assert not g.observe(("c",), 13.0)
    assert not g.observe(("a",), 13.5)             # changed back before settling: wait again
    assert g.observe(("a",), 14.6)


def test_gateway_keeps_serving_with_a_fifo_policy_file(home: Path) -> None:
    s = start_server(home)
    fifo = home / "policies" / "agents" / "zed.yaml"
    try:
        key = s.agent("alice")
        assert "result" in s.invoke(key, "system.time")
        os.mkfifo(fifo)
        # until the reloader has met the FIFO (health says so), then once more: a stuck reloader
        # would stop the answers (a timeout below), not only the health
        deadline, pol = time.monotonic() + 30, {}
        while time.monotonic() < deadline and pol.get("status") != "degraded":
            time.sleep(0.2)
            health = s.invoke(key, "system.health", timeout=10)
            pol = health.get("result", {}).get("layers", {}).get("policy", {})
        assert pol.get("status") == "degraded" and "not a regular file" in str(pol.get("errors")), health
        time.sleep(1.5)           # a further poll with the FIFO in place (not a timing assertion)
        r = s.rpc(key, "capabilities.invoke", {"name": "system.time", "arguments": {}}, timeout=10).json()
        assert "result" in r, r
    except httpx.TimeoutException:
        pytest.fail("the gateway stopped answering while a FIFO sat in policies/")
    finally:
        with contextlib.suppress(OSError):   # a reader stuck on the FIFO (old code) gets EOF
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        s.stop()
