"""`stockade pack ...` end to end on a home: keygen, trust, sign, verify, install, list, remove."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.conftest import cli_json, quick_json, run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packs" / "textutils"


@pytest.fixture
def signed_pack(home: Path, tmp_path: Path) -> tuple[Path, Path]:
    # setup, and the `pack list` reads below, in this process (quick_json); the commands a test
    # is about (install, verify, remove, doctor) run as the real CLI
    kp = tmp_path / "pub"
    keys = quick_json("pack", "keygen", "--out", str(kp))
    assert oct(os.stat(keys["key"]).st_mode & 0o777) == "0o600"
    quick_json("pack", "trust", keys["pub"], "--name", "example", home=home)
    d = tmp_path / "textutils"
    shutil.copytree(EXAMPLE, d)
    quick_json("pack", "sign", str(d), "--key", keys["key"])
    return d, Path(keys["key"])


def _bump(d: Path, version: str, key: Path) -> None:
    y = (d / "pack.yaml").read_text()
    import re

    (d / "pack.yaml").write_text(re.sub(r"^version: .*$", f"version: {version}", y, flags=re.M))
    quick_json("pack", "sign", str(d), "--key", str(key))


def test_install_list_remove(home: Path, signed_pack: tuple[Path, Path]) -> None:
    d, _ = signed_pack
    assert cli_json("pack", "verify", str(d), home=home)["valid"]
    out = cli_json("pack", "install", str(d), home=home)
    assert out["pack"] == "textutils" and out["version"] == "1.0.0" and out["live"] is False
    store = home / "packs" / "textutils" / "1.0.0"
    assert (store / "src" / "digest.py").read_bytes() == (d / "src" / "digest.py").read_bytes()
    assert os.stat(store / "src" / "digest.py").st_mode & 0o222 == 0  # read-only store
    listed = quick_json("pack", "list", home=home)
    assert [p["name"] for p in listed["packs"]] == ["textutils"]
    assert json.loads(run_cli("doctor", "--json", home=home, check=False).stdout)["checks"]["packs"]["status"] == "ok"
    cli_json("pack", "remove", "textutils", home=home)
    assert quick_json("pack", "list", home=home)["packs"] == []
    assert not store.exists()


def test_tampered_pack_is_not_installed(home: Path, signed_pack: tuple[Path, Path]) -> None:
    d, _ = signed_pack
    with open(d / "src" / "stats.py", "a") as f:
        f.write("\nimport os; os.system('id')\n")
    p = run_cli("pack", "install", str(d), "--json", home=home, check=False)
    assert p.returncode == 2
    err = json.loads(p.stdout)["error"]
    assert err["type"] == "PackSignatureInvalid" and err["file"] == "src/stats.py"
    assert quick_json("pack", "list", home=home)["packs"] == []
    assert not (home / "packs" / "textutils").exists()
    assert [x.name for x in (home / "packs").iterdir()] == []  # nothing half-installed


def test_planted_pyc_is_refused(home: Path, signed_pack: tuple[Path, Path]) -> None:
    d, _ = signed_pack
    (d / "src" / "__pycache__").mkdir()
    (d / "src" / "__pycache__" / "digest.cpython-311.pyc").write_bytes(b"\x00" * 16)
    p = run_cli("pack", "install", str(d), "--json", home=home, check=False)
    assert p.returncode == 2 and "bytecode" in json.loads(p.stdout)["error"]["message"]


def test_untrusted_publisher_refused(home: Path, tmp_path: Path) -> None:
    d = tmp_path / "t"
    shutil.copytree(EXAMPLE, d)
    k = quick_json("pack", "keygen", "--out", str(tmp_path / "stranger"))
    quick_json("pack", "sign", str(d), "--key", k["key"])
    p = run_cli("pack", "install", str(d), "--json", home=home, check=False)
    assert p.returncode == 2 and "not trusted" in json.loads(p.stdout)["error"]["message"]
    v = run_cli("pack", "verify", str(d), "--json", home=home, check=False)
    assert v.returncode == 1 and json.loads(v.stdout)["valid"] is False


def test_downgrade_refused_unless_allowed(home: Path, signed_pack: tuple[Path, Path], tmp_path: Path) -> None:
    d, key = signed_pack
    old = tmp_path / "old"
    shutil.copytree(d, old)               # a validly signed 1.0.0, kept by an attacker
    _bump(d, "1.1.0", key)
    cli_json("pack", "install", str(d), home=home)
    p = run_cli("pack", "install", str(old), "--json", home=home, check=False)
    assert p.returncode == 2 and "older" in json.loads(p.stdout)["error"]["message"]
    cli_json("pack", "remove", "textutils", home=home)   # removal keeps the highest version seen
    assert run_cli("pack", "install", str(old), home=home, check=False).returncode == 2
    assert cli_json("pack", "install", str(old), "--allow-downgrade", home=home)["version"] == "1.0.0"


def test_tarball_install(home: Path, signed_pack: tuple[Path, Path], tmp_path: Path) -> None:
    d, key = signed_pack
    tgz = tmp_path / "textutils.tar.gz"
    cli_json("pack", "sign", str(d), "--key", str(key), "--tarball", str(tgz))
    assert cli_json("pack", "install", str(tgz), home=home)["version"] == "1.0.0"


def test_doctor_detects_tampered_store(home: Path, signed_pack: tuple[Path, Path]) -> None:
    d, _ = signed_pack
    quick_json("pack", "install", str(d), home=home)
    f = home / "packs" / "textutils" / "1.0.0" / "src" / "stats.py"
    os.chmod(f, 0o644)
    f.write_bytes(f.read_bytes().replace(b"len(text)", b"len(text)+1"))
    checks = json.loads(run_cli("doctor", "--json", home=home, check=False).stdout)["checks"]
    assert checks["packs"]["status"] == "critical" and "src/stats.py" in checks["packs"]["invalid"]["textutils"]


def test_untrust_makes_installed_pack_invalid(home: Path, signed_pack: tuple[Path, Path]) -> None:
    d, _ = signed_pack
    quick_json("pack", "install", str(d), home=home)
    quick_json("pack", "untrust", "example", home=home)
    checks = json.loads(run_cli("doctor", "--json", home=home, check=False).stdout)["checks"]
    assert checks["packs"]["status"] == "critical"


def test_verify_install_detects_one_byte_change(home: Path, tmp_path: Path) -> None:
    """A copy of a real pinned dependency, first on the path, with one byte changed."""
    from importlib import metadata

    dist = metadata.distribution("sortedcontainers")
    site = tmp_path / "site"
    site.mkdir()
    for f in dist.files or []:
        src = Path(dist.locate_file(f))
        if src.is_file():
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    env = {"PYTHONPATH": str(site)}
    clean = json.loads(run_cli("doctor", "--verify-install", "--json", home=home, env=env, check=False).stdout)
    assert clean["checks"]["install"]["modified"] == [], clean["checks"]["install"]
    target = site / "sortedcontainers" / "sortedlist.py"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x20
    target.write_bytes(bytes(data))
    p = run_cli("doctor", "--verify-install", "--json", home=home, env=env, check=False)
    out = json.loads(p.stdout)["checks"]["install"]
    assert p.returncode == 1 and out["status"] == "critical"
    assert any(m.endswith("sortedcontainers/sortedlist.py") for m in out["modified"])
