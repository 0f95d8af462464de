"""Issue 17 acceptance: `stockade service install|uninstall|status` on bad input is one clear line
and exit 2, and changes nothing: an unknown unit directory, not root, a home owned by someone
else (or created under a directory someone else owns), a unit file it did not write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import STOCKADE, need_root, run_cli

from stockade.cli.service import Target, problems

OTHER_UID = 4242


def _refused(p: object, needle: str) -> str:
    rc, out, err = p.returncode, p.stdout, p.stderr   # type: ignore[attr-defined]
    assert rc == 2, (rc, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    return str(lines[0])


@pytest.fixture
def units(tmp_path: Path) -> Path:
    need_root()
    d = tmp_path / "units"
    d.mkdir()
    return d


def test_unknown_unit_dir(tmp_path: Path, units: Path) -> None:
    home = tmp_path / "home"
    for cmd in (["install", "--home", str(home)], ["uninstall"], ["status"]):
        p = run_cli("service", *cmd, "--unit-dir", str(tmp_path / "nope"), check=False)
        _refused(p, f"unit directory {tmp_path / 'nope'} does not exist")
    assert not home.exists()


def test_home_owned_by_someone_else(tmp_path: Path, units: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER_UID, OTHER_UID)
    p = run_cli("service", "install", "--unit-dir", str(units), "--home", str(home), check=False)
    _refused(p, f"home {home} is owned by uid {OTHER_UID}, not root")
    assert list(units.iterdir()) == [] and list(home.iterdir()) == []


def test_home_under_a_directory_someone_else_owns(tmp_path: Path, units: Path) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, OTHER_UID, OTHER_UID)
    p = run_cli("service", "install", "--unit-dir", str(units), "--home", str(parent / "home"), check=False)
    _refused(p, f"{parent} (where the home would be created) is owned by uid {OTHER_UID}")
    assert not (parent / "home").exists()


def test_a_foreign_unit_file_is_left_alone(tmp_path: Path, units: Path) -> None:
    foreign = units / "stockade.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    p = run_cli("service", "install", "--unit-dir", str(units), "--home", str(tmp_path / "home"), check=False)
    _refused(p, "was not written by stockade")
    assert not (tmp_path / "home").exists() and sorted(units.iterdir()) == [foreign]   # nothing changed
    p = run_cli("service", "uninstall", "--unit-dir", str(units), check=False)
    _refused(p, "not written by stockade")
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_service_status_says_what_is_installed(tmp_path: Path, units: Path) -> None:
    p = run_cli("service", "status", "--unit-dir", str(units), "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["units"][0]["installed"] is False
    home = tmp_path / "home"
    run_cli("service", "install", "--unit-dir", str(units), "--home", str(home), "--no-enable")
    st = json.loads(run_cli("service", "status", "--unit-dir", str(units), "--json").stdout)
    assert st["home"] == str(home) and st["units"][0]["written_by_stockade"] is True
    assert st["units"][0]["gateway_answers"] is False and st["systemd"] is os.path.isdir("/run/systemd/system")


def test_not_root_is_refused(tmp_path: Path, units: Path) -> None:
    """Run as nobody (setpriv); where this machine's interpreter is not readable by nobody, the
    decision itself: the pure check the command calls with os.geteuid()."""
    home = tmp_path / "home"
    if shutil.which("setpriv"):
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *STOCKADE, "service",
                            "install", "--unit-dir", str(units), "--home", str(home)],
                           capture_output=True, text=True, timeout=120, cwd="/")
        if "stockade" in p.stderr:       # the CLI ran (else: the interpreter is out of nobody's reach)
            _refused(p, "service install needs root")
            assert list(units.iterdir()) == [] and not home.exists()
    found = problems(Target(tmp_path, tmp_path / "home"), euid=1000)
    assert any("needs root" in f for f in found)
    assert problems(Target(tmp_path, tmp_path / "home"), euid=0) == []
    assert any("absolute" in f for f in problems(Target(tmp_path, Path("rel/home")), euid=0))
