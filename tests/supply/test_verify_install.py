"""A real release installed by pip, then attacked: each change is named, and the start gate refuses."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.release import keys, upgrade
from stockade.release.gate import decide
from stockade.release.verify import check

from .conftest import Installed


def _check(i: Installed) -> dict:  # type: ignore[type-arg]
    return check(i.inst, i.built.key.public_key())


def _refused(report: dict) -> bool:  # type: ignore[type-arg]
    return decide(report, require_verified=False, override=False).action == "refuse"


def test_the_clean_install_verifies(installed: Installed) -> None:
    r = _check(installed)
    assert r["status"] == "ok", r["message"]
    assert r["files_checked"] > 300 and any(installed.inst.purelib.rglob("*.pyc"))
    assert decide(r, require_verified=True, override=False).action == "start"


@pytest.mark.parametrize("rel", ["stockade/release/verify.py", "stockade/gateway/pipeline.py", "click/core.py",
                                 "yaml/__init__.py", "stockade-0.1.0.dist-info/entry_points.txt"])
def test_a_byte_changed_in_any_installed_file(installed: Installed, rel: str) -> None:
    p = installed.inst.purelib / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    r = _check(installed)
    assert r["status"] == "critical" and any(m.startswith(str(p)) for m in r["modified"]), r["message"]
    assert _refused(r)


def test_a_pyc_changed(installed: Installed) -> None:
    pyc = next((installed.inst.purelib / "click" / "__pycache__").glob("core.*.pyc"))
    src = (installed.inst.purelib / "click" / "__init__.py").read_bytes()
    # a valid .pyc of other code, header kept: Python would run it instead of core.py
    body = pyc.read_bytes()
    code = compile(src, "core.py", "exec")
    import importlib._bootstrap_external as be
    pyc.write_bytes(bytes(be._code_to_timestamp_pyc(code, int.from_bytes(body[8:12], "little"),
                                                   int.from_bytes(body[12:16], "little"))))
    r = _check(installed)
    assert r["status"] == "critical" and any(str(pyc) in m for m in r["pycache"]), r["message"]
    assert _refused(r)


def test_a_stray_pyc_is_refused(installed: Installed) -> None:
    stray = installed.inst.purelib / "click" / "__pycache__" / "evil.cpython-311.pyc"
    stray.write_bytes(next(stray.parent.glob("core.*.pyc")).read_bytes())
    r = _check(installed)
    assert any(str(stray) in m and "refused" in m for m in r["pycache"]) and _refused(r)


@pytest.mark.parametrize("rel", ["zz_evil.pth", "stockade/backdoor.py", "click/extra.txt"])
def test_a_file_added(installed: Installed, rel: str) -> None:
    p = installed.inst.purelib / rel
    p.write_text("import os\n")
    r = _check(installed)
    assert any(m.startswith(str(p)) for m in r["extra"]), r["message"]
    assert _refused(r)


def test_a_file_removed(installed: Installed) -> None:
    p = installed.inst.purelib / "stockade" / "audit" / "verify.py"
    p.unlink()
    r = _check(installed)
    assert any(m.startswith(str(p)) for m in r["missing"]) and _refused(r)


def test_a_record_rewritten_to_match(installed: Installed) -> None:
    """The attack the RECORD-only check missed: change a file and rewrite RECORD with its new hash."""
    p = installed.inst.purelib / "click" / "core.py"
    new = p.read_bytes() + b"\nimport os  # planted\n"
    p.write_bytes(new)
    record = next(installed.inst.purelib.glob("click-*.dist-info")) / "RECORD"
    digest = base64.urlsafe_b64encode(hashlib.sha256(new).digest()).rstrip(b"=").decode()
    lines = [f"click/core.py,sha256={digest},{len(new)}" if ln.startswith("click/core.py,") else ln
             for ln in record.read_text().splitlines()]
    record.write_text("\n".join(lines) + "\n")
    r = _check(installed)
    assert any(m.startswith(str(p)) for m in r["modified"])
    assert any("RECORD rewritten" in m for m in r["record"]) and _refused(r)


def test_a_manifest_resigned_with_another_key(installed: Installed) -> None:
    m = json.loads(installed.inst.manifest_path.read_bytes())
    m["distributions"]["click"]["files"]["click/core.py"] = ["0" * 64, 1]
    from stockade.release.manifest import canonical
    body = canonical(m)
    installed.inst.manifest_path.write_bytes(body)
    installed.inst.signature_path.write_bytes(keys.sign(body, Ed25519PrivateKey.generate()))
    r = _check(installed)
    assert r["status"] == "critical" and r["signature_ok"] is False
    assert "not signed by the publisher key" in r["message"]
    assert _refused(r)
    # and the real pinned key refuses the test release itself
    assert check(installed.inst, keys.PUBLISHER_KEY)["signature_ok"] is False


def test_a_release_without_its_manifest_is_not_a_dev_install(installed: Installed) -> None:
    installed.inst.manifest_path.unlink()
    r = _check(installed)
    assert r["status"] == "critical" and "without its manifest" in r["message"] and _refused(r)


def test_a_downgrade_or_reinstall_is_refused(installed: Installed) -> None:
    key = installed.built.key.public_key()
    cand = upgrade.load_candidate(installed.built.release.manifest, key)
    current = upgrade.installed_version(installed.inst, key)
    assert current == cand.manifest["version"]
    with pytest.raises(Exception, match="not newer"):
        upgrade.plan(cand.manifest["version"], current, allow_downgrade=False)
    with pytest.raises(Exception, match="not newer"):
        upgrade.plan("0.0.9", current, allow_downgrade=False)
    assert upgrade.plan("0.0.9", current, allow_downgrade=True) == "downgrade"
    assert upgrade.plan("0.1.1", current, allow_downgrade=False) == "upgrade"


def test_an_upgrade_signed_by_another_key_is_refused(installed: Installed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    d = tmp_path / "rel"
    shutil.copytree(installed.built.wheelhouse, d)
    sig = d / (installed.built.release.manifest.name + ".sig")
    sig.write_bytes(keys.sign(installed.built.release.manifest.read_bytes(), Ed25519PrivateKey.generate()))
    with pytest.raises(Exception, match="not signed by the publisher key"):
        upgrade.load_candidate(d, installed.built.key.public_key())
