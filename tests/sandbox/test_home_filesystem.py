"""With the data home on a filesystem of its own, nothing inside the sandbox names a host path.

The one path the kernel still prints (a bind mount's root, as its path within its filesystem:
the strict xfail `test_shipped.py::test_bind_mount_roots_name_no_host_path`) disappears when the
data home is its own filesystem; `stockade doctor` says which case a home is in. The home here
is a real tmpfs mounted where the `shipped` fixture builds it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import tmpfs_at
from tests.sandbox.test_shipped import _bind_root_lines, _host_paths, shipped  # noqa: F401 - fixture

from stockade.sandbox.setup import host_paths_check


@pytest.fixture
def own_fs_home(tmp_path: Path) -> Iterator[Path]:
    with tmpfs_at(tmp_path / "home", "64m", "stockade-home") as home:
        yield home


def test_doctor_tells_whether_the_home_is_its_own_filesystem(tmp_path: Path) -> None:
    on_disk = host_paths_check(tmp_path)
    assert on_disk["status"] == "degraded" and str(tmp_path) in on_disk["hint"], on_disk
    assert host_paths_check(Path("/proc"))["status"] == "ok"


def test_binds_of_a_home_on_its_own_filesystem_name_no_host_path(own_fs_home: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    sb = request.getfixturevalue("shipped")     # after the tmpfs is mounted where it builds the home
    assert sb.home.root == own_fs_home and host_paths_check(own_fs_home)["status"] == "ok"
    r = sb.run(["cat", "/proc/self/mountinfo"])
    binds = _bind_root_lines(r["stdout"])
    assert {ln.split()[4] for ln in binds} >= {"/workspace"}, r["stdout"]
    for p in _host_paths(sb.home):
        assert p not in r["stdout"], (p, [ln for ln in r["stdout"].splitlines() if p in ln])
