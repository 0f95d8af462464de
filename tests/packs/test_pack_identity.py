"""A pack's identity: names the gateway owns are refused, a name stays with the key that first
installed it, and an expired signature stops the pack at its next call (issue 14 items 5-7)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.conftest import cli_json, cli_quick, quick_json, run_cli

from stockade.capabilities.registry import load_registry
from stockade.core.errors import ConfigError, StockadeError
from stockade.core.home import Home
from stockade.packs import runner, store, tree
from stockade.packs.manifest import RESERVED_FAMILIES, build_manifest, check_pack_name, parse_pack_yaml, sign

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "packs" / "textutils"


def _renamed(src: Path, dest: Path, name: str, publisher: str = "example") -> Path:
    """The textutils example under another pack name (capabilities renamed to match)."""
    shutil.copytree(src, dest)
    y = (dest / "pack.yaml").read_text()
    y = re.sub(r"^name: .*$", f"name: {name}", y, flags=re.M)
    y = re.sub(r"^publisher: .*$", f"publisher: {publisher}", y, flags=re.M)
    y = y.replace("textutils.", f"{name.replace('-', '_')}.")
    (dest / "pack.yaml").write_text(y)
    return dest


def _keys(tmp: Path, home: Path, who: str) -> Path:
    # setup (keys, signing) and state reads run in this process; installs are the real CLI
    k = quick_json("pack", "keygen", "--out", str(tmp / who))
    quick_json("pack", "trust", k["pub"], "--name", who, home=home)
    return Path(k["key"])


def _install(home: Path, d: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    p = run_cli("pack", "install", str(d), "--json", *extra, home=home, check=False)
    return p.returncode, json.loads(p.stdout)


# -- item 5: built-in families ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["system", "agent", "filesystem", "process", "network", "secrets", "vault",
                                  "audit", "approvals", "tasks", "state", "capabilities"])
def test_builtin_family_names_are_refused_statically(name: str) -> None:
    with pytest.raises(StockadeError) as ei:
        check_pack_name(name)
    assert ei.value.type == "InvalidInput" and "reserved" in ei.value.message


def test_every_registry_family_is_reserved() -> None:
    """A family that appears in the built-in registry later is refused too (derived, not listed)."""
    families = {d.name.split(".", 1)[0] for d in load_registry().all()}
    for fam in families:
        with pytest.raises(StockadeError):
            check_pack_name(fam, builtin_families=families)
    assert {"system", "filesystem", "process", "network"} <= RESERVED_FAMILIES
    with pytest.raises(StockadeError):
        check_pack_name("brand-new", builtin_families={"brand_new"})   # dash spelling of a family
    with pytest.raises(StockadeError):
        check_pack_name("mirror", upstreams={"mirror"})                # an upstream server's name
    check_pack_name("textutils", builtin_families=families)


def test_pack_named_system_is_refused_at_install(home: Path, tmp_path: Path) -> None:
    key = _keys(tmp_path, home, "example")
    d = _renamed(EXAMPLE, tmp_path / "system", "system")
    # signing refuses too (parse_pack_yaml), so build the signature by hand as a hostile publisher would
    files, _ = tree.read_dir(d, skip=(tree.DEPS_DIR,))
    from stockade.packs.keys import load_private

    (d / "SIGNATURE").write_bytes(sign(build_manifest("system", "1.0.0", files), load_private(key, None)))
    rc, out = _install(home, d)
    assert rc == 2 and "reserved" in out["error"]["message"], out
    assert quick_json("pack", "list", home=home)["packs"] == []


def test_pack_named_like_a_family_is_refused_at_load(home: Path, tmp_path: Path) -> None:
    """A store row written before the check existed (or by hand) is not registered."""
    key = _keys(tmp_path, home, "example")
    d = _renamed(EXAMPLE, tmp_path / "src-audit", "audit")
    files, _ = tree.read_dir(d, skip=(tree.DEPS_DIR,))
    from stockade.packs.keys import load_private

    sig = sign(build_manifest("audit", "1.0.0", files), load_private(key, None))
    dest = home / "packs" / "audit" / "1.0.0"
    shutil.copytree(d, dest)
    (dest / "SIGNATURE").write_bytes(sig)
    import hashlib

    from stockade.packs.manifest import canonical

    signed = json.loads(sig)["manifest"]
    h = Home(home)
    conn = h.db()
    kid = json.loads(sig)["key_id"]
    conn.execute("INSERT INTO packs(name, version, publisher, key_id, manifest_sha256, installed_at, "
                 "highest_version) VALUES ('audit','1.0.0','example',?,?,0,'1.0.0')",
                 (kid, hashlib.sha256(canonical(signed)).hexdigest()))
    from stockade.packs import setup as packs_setup

    reg = load_registry()
    gw = SimpleNamespace(home=h, pipeline=SimpleNamespace(registry=reg, db=conn), state={}, packs={}, pack_specs={})
    pk = store.installed(conn)[0]
    with pytest.raises((StockadeError, ConfigError)) as ei:
        packs_setup._register(gw, pk)
    assert "reserved" in str(ei.value)
    assert not any(x.pack == "audit" for x in reg.all())


# -- item 6: a name is bound to its first key -------------------------------------------------------
def test_second_publisher_cannot_take_over_a_name(home: Path, tmp_path: Path) -> None:
    k1 = _keys(tmp_path, home, "alice")
    k2 = _keys(tmp_path, home, "mallory")
    a = _renamed(EXAMPLE, tmp_path / "a", "exchange", "alice")
    quick_json("pack", "sign", str(a), "--key", str(k1))
    assert _install(home, a)[0] == 0
    m = _renamed(EXAMPLE, tmp_path / "m", "exchange", "mallory")
    (m / "pack.yaml").write_text(re.sub(r"^version: .*$", "version: 1.0.1", (m / "pack.yaml").read_text(),
                                        flags=re.M))
    quick_json("pack", "sign", str(m), "--key", str(k2))
    rc, out = _install(home, m)
    assert rc == 2 and "publisher" in out["error"]["message"] and "--new-publisher" in out["error"]["message"], out
    assert quick_json("pack", "list", home=home)["packs"][0]["publisher"] == "alice"
    # removal does not free the name either
    cli_json("pack", "remove", "exchange", home=home)
    assert _install(home, m)[0] == 2
    # the owner's explicit flag moves it, and the change is audited
    rc, out = _install(home, m, "--new-publisher")
    assert rc == 0 and out["publisher"] == "mallory", out
    recs = [json.loads(line) for line in cli_quick("audit", "query", "--json", home=home).stdout.splitlines()
            if line.strip()]
    flat = json.dumps(recs)
    assert "pack.publisher_changed" in flat and "alice" in flat


# -- item 7: expiry at every call, on the gateway's clock --------------------------------------------
def _runner_info(tmp_path: Path, expires: str | None) -> dict:  # type: ignore[type-arg]
    k = Ed25519PrivateKey.generate()
    d = tmp_path / "pack"
    shutil.copytree(EXAMPLE, d)
    files, _ = tree.read_dir(d, skip=(tree.DEPS_DIR,))
    spec = parse_pack_yaml(files["pack.yaml"].decode())
    manifest = build_manifest(spec.name, spec.version, files, expires)
    (d / "SIGNATURE").write_bytes(sign(manifest, k))
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from stockade.packs.manifest import canonical, key_id

    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"name": spec.name, "version": spec.version, "key_id": key_id(k.public_key()),
            "pubkey": base64.b64encode(raw).decode(),
            "manifest_sha256": hashlib.sha256(canonical(manifest)).hexdigest(),
            "deps_sha256": None, "dir": str(d), "entries": {c.name: c.entry for c in spec.capabilities}}


def test_expired_signature_is_refused_at_the_call(tmp_path: Path) -> None:
    exp = datetime.now(UTC) + timedelta(days=1)
    info = _runner_info(tmp_path, exp.isoformat(timespec="seconds"))
    runner.verify_in_place({**info, "now": time.time()})            # before expiry: runs
    with pytest.raises(StockadeError) as ei:
        runner.verify_in_place({**info, "now": (exp + timedelta(seconds=1)).timestamp()})
    assert ei.value.type == "PackSignatureInvalid" and "expired" in ei.value.message
    with pytest.raises(StockadeError) as ei:                         # no clock from the gateway: refused
        runner.verify_in_place(info)
    assert ei.value.type == "PackSignatureInvalid"


def test_gateway_passes_its_clock_with_each_call(home: Path, tmp_path: Path) -> None:
    key = _keys(tmp_path, home, "example")
    d = tmp_path / "t"
    shutil.copytree(EXAMPLE, d)
    quick_json("pack", "sign", str(d), "--key", str(key))
    assert _install(home, d)[0] == 0
    h = Home(home)
    conn: sqlite3.Connection = h.db()
    pk = store.installed(conn)[0]
    before = time.time()
    info = store.runner_info(h, conn, pk)
    assert before <= info["now"] <= time.time()
    assert store.runner_info(h, conn, pk, now=12.5)["now"] == 12.5
