"""Same commit, same wheel and manifest, byte for byte (a second build compared with the first)."""

from __future__ import annotations

import sys
from pathlib import Path

from stockade.release.build import build_release

from .conftest import REPO, Built, small_lock


def test_two_builds_are_byte_identical(built: Built, tmp_path: Path) -> None:
    again = build_release(repo=REPO, out=tmp_path / "out", key=built.key, lock=small_lock(tmp_path / "l.lock"),
                          commit=built.release.commit,
                          python=sys.executable)
    assert again.wheel.read_bytes() == built.release.wheel.read_bytes()
    assert again.manifest.read_bytes() == built.release.manifest.read_bytes()
    assert again.signature.read_bytes() == built.release.signature.read_bytes()
