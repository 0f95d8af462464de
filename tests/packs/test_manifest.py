"""Pure pack verification: every tamper is refused naming the file; fuzzed parsers never crash."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import ConfigError, StockadeError
from stockade.packs import tree
from stockade.packs.manifest import build_manifest, check_lockfile, check_path, key_id, parse_pack_yaml, sign, verify
from stockade.packs.runner import load_entry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packs" / "textutils"


def _raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed(key: Ed25519PrivateKey) -> tuple[dict[str, bytes], bytes, dict[str, tuple[str, bytes]]]:
    files, _ = tree.read_dir(EXAMPLE)
    spec = parse_pack_yaml(files["pack.yaml"].decode())
    sig = sign(build_manifest(spec.name, spec.version, files), key)
    return files, sig, {key_id(key.public_key()): ("example", _raw(key))}


def test_valid_pack_verifies(signed) -> None:  # type: ignore[no-untyped-def]
    files, sig, trusted = signed
    v = verify(files, sig, trusted)
    assert v.spec.name == "textutils" and v.publisher == "example"


def _refused(files, sig, trusted, file: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(StockadeError) as ei:
        verify(files, sig, trusted)
    assert ei.value.data.get("file") == file, ei.value.message
    return ei.value.message


def test_changed_byte_is_refused(signed) -> None:  # type: ignore[no-untyped-def]
    files, sig, trusted = signed
    data = bytearray(files["src/digest.py"])
    data[10] ^= 1
    assert "differs" in _refused({**files, "src/digest.py": bytes(data)}, sig, trusted, "src/digest.py")


def test_added_file_is_refused(signed) -> None:  # type: ignore[no-untyped-def]
    files, sig, trusted = signed
    assert "not in the signed manifest" in _refused({**files, "src/evil.py": b"import os"}, sig, trusted,
                                                    "src/evil.py")


def test_removed_file_is_refused(signed) -> None:  # type: ignore[no-untyped-def]
    files, sig, trusted = signed
    files = dict(files)
    del files["src/_common.py"]
    assert "missing" in _refused(files, sig, trusted, "src/_common.py")


def test_untrusted_key_is_refused(signed) -> None:  # type: ignore[no-untyped-def]
    files, sig, _ = signed
    other = Ed25519PrivateKey.generate()
    assert "not trusted" in _refused(files, sig, {key_id(other.public_key()): ("example", _raw(other))}, "SIGNATURE")


def test_swapped_signature_is_refused(signed, key) -> None:  # type: ignore[no-untyped-def]
    files, sig, trusted = signed
    doc = json.loads(sig)
    other = Ed25519PrivateKey.generate()
    doc["signature"] = base64.b64encode(other.sign(b"x")).decode()
    assert "does not verify" in _refused(files, json.dumps(doc).encode(), trusted, "SIGNATURE")
    # A signature made for different content, re-labelled with our key id, does not verify either.
    doc = json.loads(sig)
    doc["manifest"]["files"][0]["sha256"] = "0" * 64
    assert "does not verify" in _refused(files, json.dumps(doc).encode(), trusted, "SIGNATURE")


def test_signature_for_another_version_is_refused(signed, key) -> None:  # type: ignore[no-untyped-def]
    files, _, trusted = signed
    older = sign(build_manifest("textutils", "0.9.0", files), key)
    assert "0.9.0" in _refused(files, older, trusted, "SIGNATURE")


def test_publisher_mismatch_is_refused(signed, key) -> None:  # type: ignore[no-untyped-def]
    files, sig, _ = signed
    assert "publisher" in _refused(files, sig, {key_id(key.public_key()): ("someone-else", _raw(key))}, "SIGNATURE")


def test_expired_signature_is_refused(signed, key) -> None:  # type: ignore[no-untyped-def]
    files, _, trusted = signed
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    sig = sign(build_manifest("textutils", "1.0.0", files, past), key)
    assert "expired" in _refused(files, sig, trusted, "SIGNATURE")
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    verify(files, sign(build_manifest("textutils", "1.0.0", files, future), key), trusted)


@pytest.mark.parametrize("path", ["src/__pycache__/digest.cpython-311.pyc", "src/x.pyc", "../etc/passwd",
                                  "/abs.py", "src/./a.py", "src/a.so", "evil.pth", "setup.py", "src/a\\b.py"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(StockadeError):
        check_path(path)


def test_lockfile_requires_pins_and_hashes() -> None:
    good = "six==1.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
    assert check_lockfile(good) == ["six"]
    for bad in ("six==1.16.0\n", "six>=1.0 --hash=sha256:" + "a" * 64, "--index-url http://x\nsix==1",
                "six==1.16.0 --hash=md5:abc"):
        with pytest.raises(StockadeError) as ei:
            check_lockfile(bad)
        assert ei.value.data["file"] == "requirements.lock"


def test_malformed_pack_yaml_has_file_line() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_pack_yaml("name: textutils\nversion: one\npublisher: x\ncapabilities: []\n")
    assert any(e.startswith("pack.yaml:2:") for e in ei.value.errors)


def test_runner_executes_verified_bytes_from_memory(signed, tmp_path: Path) -> None:
    files, sig, trusted = signed
    fn = load_entry("textutils", files, "digest:digest")
    import hashlib

    assert fn({"text": "abc"})["hex"] == hashlib.sha256(b"abc").hexdigest()
    # Nothing was written next to the sources and nothing was read from disk: a pack whose modules
    # exist only in memory still imports its relative modules.
    assert not list(EXAMPLE.rglob("__pycache__"))


def test_symlink_in_pack_is_refused(tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "p"
    shutil.copytree(EXAMPLE, d)
    (d / "src" / "link.py").symlink_to("/etc/passwd")
    with pytest.raises(StockadeError) as ei:
        tree.read_dir(d)
    assert ei.value.data["file"] == "src/link.py"


@pytest.mark.parametrize(("after", "swap"), [("listdir", "vanish"), ("stat", "vanish"), ("stat", "symlink")])
def test_a_file_swapped_while_the_walk_reads_it_is_a_changed_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: str, swap: str) -> None:
    """The race CI hit (a racer renaming files in a live pack): whatever the walk meets after
    listing or stat-ing a name, it answers PackSignatureInvalid naming the file, never an OSError
    (which the sandbox reported as Internal)."""
    import shutil

    d = tmp_path / "p"
    shutil.copytree(EXAMPLE, d)
    target = d / "src" / "stats.py"
    real, swapped = getattr(os, after), []

    def then_swap(*a, **kw):  # type: ignore[no-untyped-def]
        out = real(*a, **kw)
        hit = "stats.py" in out if after == "listdir" else a[0] == "stats.py"
        if hit and not swapped:
            swapped.append(True)
            target.unlink()
            if swap == "symlink":
                target.symlink_to("/etc/passwd")
        return out

    monkeypatch.setattr(tree.os, after, then_swap)
    with pytest.raises(StockadeError) as ei:
        tree.read_dir(d)
    assert ei.value.type == "PackSignatureInvalid" and ei.value.data["file"] == "src/stats.py", ei.value


def test_tarball_with_dotdot_is_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    p = tmp_path / "evil.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        info = tarfile.TarInfo("pack/../../escape.py")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(StockadeError) as ei:
        tree.read_tarball(p)
    assert "escape" in ei.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_signature_parser(sig: bytes) -> None:
    files, _ = tree.read_dir(EXAMPLE)
    with pytest.raises(StockadeError):
        verify(files, sig, {})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_pack_yaml(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_pack_yaml(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_lockfile(text: str) -> None:
    try:
        check_lockfile(text)
    except StockadeError as e:
        assert e.data["file"] == "requirements.lock"
