"""`pip install` of the wheel into a fresh venv, run as a normal user (no root, no Debian packages
needed for the client side): `stockade --version`, `stockade connect`, `stockade knock` work, and
the version is the one string in stockade/__init__.py. Dependencies come through pip's configured
index (the same client `pip install` on a laptop uses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.conftest import ROOT, need

from stockade import __version__

SLOW = 600


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_as_a_normal_user() -> None:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "root to drop to an unprivileged uid")
    tmp_path = Path(tempfile.mkdtemp(prefix="stockade-pkg-", dir="/tmp"))   # pytest's tmp is 0700 (root only)
    try:
        _install_and_run(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _install_and_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", ".test-servers", ".demo-home",
                                                              "build", "*.egg-info", "__pycache__", "test-artifacts"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, timeout=SLOW)
    (wheel,) = wheels.glob("stockade-*.whl")
    assert wheel.name.startswith(f"stockade-{__version__}-")
    venv = tmp_path / "venv"
    # A venv without its own pip (ensurepip costs ~10 s); this pip installs into it (`--python`), and
    # skips byte-compiling every dependency (the runs below compile what they import).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=SLOW)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-compile", "--disable-pip-version-check", str(wheel)], check=True, timeout=SLOW)
    os.chmod(tmp_path, 0o755)
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "nohome")}

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*user, str(venv / "bin" / "stockade"), *args], capture_output=True, text=True,
                              env={**env, **(extra or {})}, timeout=SLOW, cwd="/")

    v = run("--version")
    assert v.returncode == 0 and __version__ in v.stdout, (v.stdout, v.stderr)
    for cmd in (("connect", "--help"), ("knock", "--help")):
        p = run(*cmd)
        assert p.returncode == 0, (cmd, p.stderr)
    # knock sends its one datagram as a normal user (keys from the environment only).
    k = run("knock", "127.0.0.1", "--spa-port", "9", "--allow-ip", "127.0.0.1",
            extra={"STOCKADE_KNOCK_KEY": "a" * 43})
    assert "Traceback" not in k.stderr, k.stderr
    # connect with no gateway to reach says so, it does not crash.
    c = run("connect", extra={"STOCKADE_AGENT_KEY": "stk_" + "a" * 43, "STOCKADE_URL": "http://127.0.0.1:9"})
    assert "Traceback" not in c.stderr and "ModuleNotFoundError" not in c.stderr, c.stderr
