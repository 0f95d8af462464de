"""`stockade upgrade FILE`: install a release only if the pinned key signed it and it is newer.

Every wheel is installed with `pip --require-hashes --no-deps` from the hashes in the signed
manifest, so a compromised package index (or a swapped wheel beside the manifest) cannot slip
anything in: pip refuses a file whose hash is not the signed one. Distributions the new release no
longer contains are removed; then the signed manifest is put in place and the install is verified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.core.errors import err
from stockade.release import keys, manifest
from stockade.release.verify import TOOLING, Install, check


@dataclass(frozen=True)
class Candidate:
    path: Path
    body: bytes
    signature: bytes
    manifest: dict[str, Any]


def load_candidate(path: Path, key: Ed25519PublicKey) -> Candidate:
    """The signed manifest at PATH (or the one manifest in directory PATH), signature checked first."""
    if path.is_dir():
        found = sorted(path.glob("stockade-*.manifest.json"))
        if len(found) != 1:
            raise err("InvalidInput", f"{path}: expected one stockade-*.manifest.json, found {len(found)}")
        path = found[0]
    sig_path = path.with_name(path.name + ".sig")
    try:
        body, sig = path.read_bytes(), sig_path.read_bytes()
    except OSError as e:
        raise err("InvalidInput", f"cannot read {e.filename}: {e.strerror} (a release is the manifest, "
                  "its .sig and the wheels beside it)") from None
    if not keys.verify(body, sig, key):
        raise err("InvalidInput", f"{path} is not signed by the publisher key {keys.key_id(key)}: refused")
    return Candidate(path, body, sig, manifest.parse(body))


def installed_version(inst: Install, key: Ed25519PublicKey) -> str | None:
    """The installed release's version (its signed manifest), else stockade's installed version."""
    if inst.manifest_path.exists():
        try:
            return load_candidate(inst.manifest_path, key).manifest["version"]
        except Exception:  # noqa: S110 (an unverifiable manifest says nothing; fall back to the dist-info)
            pass
    for d in metadata.distributions(path=[str(inst.purelib)]):
        if manifest.norm_name(d.metadata["Name"] or "") == "stockade":
            return d.version
    return None


def plan(candidate: str, installed: str | None, allow_downgrade: bool) -> str:
    """'install' | 'upgrade' | 'downgrade' (allowed), or InvalidInput naming why not."""
    if installed is None:
        return "install"
    if manifest.is_newer(candidate, installed):
        return "upgrade"
    if allow_downgrade:
        return "downgrade"
    raise err("InvalidInput", f"release {candidate} is not newer than the installed {installed}: refused "
              "(a downgrade or reinstall needs --allow-downgrade)")


def requirements(c: Candidate) -> str:
    """A --require-hashes requirements file: every wheel pinned to the signed SHA-256."""
    lines = []
    for name, d in sorted(c.manifest["distributions"].items()):
        w = d["wheel"]
        local = c.path.parent / w["file"]
        spec = str(local) if name == "stockade" or local.exists() else f"{name}=={d['version']}"
        lines.append(f"{spec} --hash=sha256:{w['sha256']}")
    return "\n".join(lines) + "\n"


def _pip(pip: list[str], *args: str) -> None:
    p = subprocess.run([*pip, *args], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise err("Internal", "pip failed: " + " | ".join((p.stderr or p.stdout).strip().splitlines()[-4:]))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def install(c: Candidate, inst: Install, key: Ed25519PublicKey, *, pip: list[str] | None = None,
            offline: bool = False) -> dict[str, Any]:
    """Install candidate C into INST, drop what it no longer ships, place its manifest, verify."""
    pip = pip or [sys.executable, "-m", "pip"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write(requirements(c))
        req.flush()
        args = ["install", "-q", "--no-deps", "--require-hashes", "--only-binary", ":all:",
                "--find-links", str(c.path.parent), "-r", req.name]
        _pip(pip, *args, *(["--no-index"] if offline else []))
    wanted = set(c.manifest["distributions"])
    present = {manifest.norm_name(d.metadata["Name"] or "") for d in metadata.distributions(path=[str(inst.purelib)])}
    stale = sorted(present - wanted - set(TOOLING))
    if stale:
        _pip(pip, "uninstall", "-q", "-y", *stale)
    _write(inst.manifest_path, c.body)
    _write(inst.signature_path, c.signature)
    return {"installed": c.manifest["version"], "removed": stale, "verify": check(inst, key)}
