"""The home's volume (stockade.core.volume): the sandbox's bind roots name no host path.

Pure parts (mountinfo parsing, what a bind's root shows, sizes) are checked on text; the shell
(`stockade init`, `stockade volume ...`, the gateway's start) on real loop devices and mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import cli_quick, need_root, quick_json

from stockade.core import volume
from stockade.core.home import Home

LINES = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /tmp/own\\040home rw,relatime shared:9 - tmpfs tmpfs rw
41 22 7:0 / /var/lib/stockade/volume rw,nosuid,nodev shared:20 - ext4 /dev/loop0 rw
42 22 7:0 /workspaces /var/lib/stockade/workspaces rw,nosuid,nodev shared:20 - ext4 /dev/loop0 rw
43 22 7:0 /shared /var/lib/stockade/shared rw,nosuid,nodev shared:20 - ext4 /dev/loop0 rw
50 22 254:0 /srv/data /srv/stock rw shared:1 - ext4 /dev/vda rw
garbage line
"""


def test_mountinfo_fields_and_escapes() -> None:
    ms = volume.parse_mountinfo(LINES)
    assert len(ms) == 6                                  # the garbage line is skipped
    assert ms[1] == volume.Mount("0:27", "/", "/tmp/own home", "tmpfs", "tmpfs")
    assert ms[3].root == "/workspaces" and ms[3].source == "/dev/loop0"


def test_shown_root_is_the_path_within_the_filesystem() -> None:
    ms = volume.parse_mountinfo(LINES)
    assert volume.shown_root(ms, "/var/lib/stockade/workspaces/bot") == "/workspaces/bot"
    assert volume.shown_root(ms, "/var/lib/stockade/trash/bot") == "/var/lib/stockade/trash/bot"  # not bound
    assert volume.shown_root(ms, "/srv/stock/x") == "/srv/data/x"     # a bind from the root fs
    assert volume.shown_root(ms, "/tmp/own home/workspaces") == "/workspaces"


def test_exposed_names_only_what_lives_outside_a_mount_in_the_home() -> None:
    ms = volume.parse_mountinfo(LINES)
    home = "/var/lib/stockade"
    got = volume.exposed(ms, home, [f"{home}/{d}" for d in volume.VOLUME_DIRS])
    assert got == {f"{home}/trash": f"{home}/trash", f"{home}/packs": f"{home}/packs"}
    assert volume.exposed(ms, "/tmp/own home", ["/tmp/own home/workspaces"]) == {}   # a home that is a fs
    assert volume.exposed(ms, "/srv/stock", ["/srv/stock/workspaces"]) != {}         # a bind of /srv/data
    # a volume whose own root names the home (a bind of the home's dir, not a filesystem) is exposed
    twisted = volume.parse_mountinfo("60 22 254:0 /var/lib/stockade/w /var/lib/stockade/workspaces rw - "
                                     "ext4 /dev/vda rw")
    assert volume.exposed(twisted, home, [f"{home}/workspaces"]) != {}


@given(st.text(max_size=200))
def test_parse_mountinfo_never_raises(text: str) -> None:
    for m in volume.parse_mountinfo(text):
        assert isinstance(m.mountpoint, str)


def test_sizes() -> None:
    assert volume.parse_size("8G") == 8 << 30 and volume.parse_size("512MiB") == 512 << 20
    assert volume.parse_size(str(1 << 30)) == 1 << 30
    for bad in ("", "8X", "-1G", "1M", "1.5G"):
        with pytest.raises(ValueError):
            volume.parse_size(bad)
    assert volume.default_size(100 << 30) == volume.DEFAULT_MAX
    assert volume.default_size(4 << 30) == 2 << 30
    assert volume.default_size(1 << 20) == volume.MIN_SIZE


# -- real mounts -------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    need_root()
    h = Home(tmp_path / "home")
    yield h
    volume.unmount(h)


def _mounted_here(h: Home) -> list[str]:
    return [m.mountpoint for m in volume.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
            if m.mountpoint.startswith(str(h.root) + "/")]


def test_init_as_root_gives_a_new_home_its_volume(home: Home) -> None:
    out = quick_json("init", home=home.root)
    assert out["volume"] is True
    st_ = quick_json("volume", "status", home=home.root)
    assert st_["mounted"] and st_["bound"] == dict.fromkeys(volume.VOLUME_DIRS, True) and st_["exposed"] == {}
    assert 0 < st_["size_bytes"] <= volume.DEFAULT_MAX
    assert os.stat(volume.image_path(home)).st_mode & 0o777 == 0o600
    assert os.stat(volume.image_path(home)).st_blocks * 512 < 64 << 20     # sparse: disk as it is used
    (home.workspaces / "f").write_text("x")
    assert (volume.mount_path(home) / "workspaces" / "f").read_text() == "x"   # same files, the volume's
    again = quick_json("init", home=home.root)                               # idempotent
    assert again["volume"] is True and len(_mounted_here(home)) == 5


def test_volume_none_and_the_doctor_hint(home: Home) -> None:
    quick_json("init", "--volume", "none", home=home.root)
    assert not volume.configured(home) and _mounted_here(home) == []
    r = cli_quick("volume", "status", home=home.root, check=False)
    assert r.returncode == 0 and "no volume" in r.stdout
    from stockade.sandbox.setup import host_paths_check
    assert host_paths_check(home.root)["status"] == "degraded"


def test_create_moves_existing_files_in_and_refuses_a_clash(home: Home) -> None:
    quick_json("init", "--volume", "none", home=home.root)
    (home.workspaces / "bot").mkdir(mode=0o700)
    (home.workspaces / "bot" / "notes.md").write_text("kept")
    os.chown(home.workspaces / "bot", 1234, 1234)
    bad = cli_quick("volume", "create", "10M", home=home.root, check=False)
    assert bad.returncode == 2 and "at least 64 MiB" in bad.stderr + bad.stdout
    quick_json("volume", "create", "128M", home=home.root)
    assert (home.workspaces / "bot" / "notes.md").read_text() == "kept"
    assert os.stat(home.workspaces / "bot").st_uid == 1234                # owners kept (cp -a)
    assert volume.status(home)["exposed"] == {}
    # unmounted, a file lands in the bare directory; mounting moves it in, a clash is refused
    quick_json("volume", "unmount", home=home.root)
    assert _mounted_here(home) == [] and not (home.workspaces / "bot").exists()
    (home.packs / "late").write_text("written while unmounted")
    quick_json("volume", "mount", home=home.root)
    assert (volume.mount_path(home) / "packs" / "late").read_text() == "written while unmounted"
    quick_json("volume", "unmount", home=home.root)
    (home.workspaces / "bot").mkdir()
    r = cli_quick("volume", "mount", "--json", home=home.root, check=False)
    assert r.returncode != 0 and "bot" in r.stdout + r.stderr
    assert (home.workspaces / "bot").exists() and not os.path.ismount(home.workspaces)


def test_create_refuses_a_second_volume(home: Home) -> None:
    quick_json("init", home=home.root)
    r = cli_quick("volume", "create", "128M", "--json", home=home.root, check=False)
    assert r.returncode != 0 and "already has a volume" in r.stdout


def test_the_gateway_mounts_the_volume_at_start(home: Home) -> None:
    """After a reboot nothing is mounted: `stockade serve` mounts before the zygote forks."""
    from stockade.gateway import service

    quick_json("init", home=home.root)
    quick_json("volume", "unmount", home=home.root)
    assert _mounted_here(home) == []
    service._mount_volume(home)
    assert len(_mounted_here(home)) == 5
    volume.unmount(home)
    volume.image_path(home).write_bytes(b"not an ext4 image")     # a volume that cannot mount: refused
    with pytest.raises(service.StartupFailed, match="volume"):
        service._mount_volume(home)
