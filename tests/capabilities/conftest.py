"""Fixtures: a workspace, a trash and an 'outside' directory with a secret, in tmp_path.

The handlers take their roots from ctx, so the same code the sandbox runs is exercised here
against real directories, real symlinks and real syscalls (openat2 and the fallback walk).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.capabilities import paths
from stockade.sandbox import Profile, SandboxContext

SECRET = b"TOP-SECRET-OUTSIDE\n"


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the kernel's openat2 and with the user-space O_NOFOLLOW walk."""
    if request.param == "openat2" and not paths.openat2_available():
        pytest.skip("openat2 not available on this kernel")
    saved = paths._OPENAT2_OK
    paths._OPENAT2_OK = request.param == "openat2"
    try:
        yield request.param
    finally:
        paths._OPENAT2_OK = saved


class Env:
    def __init__(self, base: Path):
        self.base = base
        self.ws = base / "ws"
        self.trash = base / "trash"
        self.outside = base / "outside"
        self.shared = base / "shared"
        for d in (self.ws, self.trash, self.outside, self.shared):
            d.mkdir()
        (self.outside / "secret").write_bytes(SECRET)
        (self.shared / "readme").write_text("shared\n")
        # Hostile symlinks an agent could plant with process.run.
        os.symlink("../outside", self.ws / "out")
        os.symlink(str(self.outside / "secret"), self.ws / "abs_secret")
        os.symlink("/", self.ws / "root")
        os.symlink("/proc/self/root", self.ws / "magic")
        os.symlink("loop2", self.ws / "loop1")
        os.symlink("loop1", self.ws / "loop2")
        (self.ws / "dir").mkdir()
        (self.ws / "dir" / "file.txt").write_text("hello\nworld\n")
        os.symlink("../out/secret", self.ws / "dir" / "sneaky")
        os.symlink("file.txt", self.ws / "dir" / "alias")   # stays inside: allowed

    def ctx(self, **profile: object) -> SandboxContext:
        return SandboxContext(agent="tester", call_id="c0ffee", capability="test",
                              profile=Profile(**profile), workspace=str(self.ws), trash=str(self.trash),
                              tmp=str(self.base / "tmp"), shared=str(self.shared))

    def snapshot(self) -> dict[str, tuple[str, str]]:
        """Everything under base (no symlink followed): detects any change anywhere."""
        out: dict[str, tuple[str, str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.base, followlinks=False):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                rel = os.path.relpath(p, self.base)
                s = os.lstat(p)
                if os.path.islink(p):
                    out[rel] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    out[rel] = ("dir", oct(s.st_mode))
                elif not stat.S_ISREG(s.st_mode):
                    out[rel] = ("special", oct(s.st_mode))
                else:
                    out[rel] = ("file", hashlib.sha256(Path(p).read_bytes()).hexdigest() + oct(s.st_mode))
        return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "tmp").mkdir()
    return Env(tmp_path)
