"""A real release built from this repository's HEAD (a small subset of requirements.lock, signed with
a key made here) and installed into a fresh venv by pip: what the tamper tests attack."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.release import keys
from stockade.release.build import Release, build_release
from stockade.release.verify import Install

REPO = Path(__file__).resolve().parents[2]
SUBSET = ("click", "idna", "pyyaml")
HEAD = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                      check=True).stdout.strip()   # one commit for every build of the session


def small_lock(dest: Path) -> Path:
    """The SUBSET's entries of requirements.lock, hashes and all."""
    text = (REPO / "requirements.lock").read_text()
    blocks = re.findall(r"^([A-Za-z0-9][^\n]*==[^\n]*\\\n(?:    --hash=[^\n]*\n)+)", text, re.M)
    keep = [b.rstrip(" \\\n") + "\n" for b in blocks if b.split("==")[0] in SUBSET]
    assert len(keep) == len(SUBSET)
    dest.write_text("".join(k.replace(" \\\n    # ", "\n") for k in keep))
    return dest


@dataclass
class Built:
    release: Release
    key: Ed25519PrivateKey
    wheelhouse: Path


@dataclass
class Installed:
    inst: Install
    built: Built


def install_release(built: Built, venv: Path) -> Install:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-index", "--no-deps", *map(str, sorted(built.wheelhouse.glob("*.whl")))], check=True)
    inst = Install.at(venv)
    inst.manifest_path.parent.mkdir(parents=True)
    inst.manifest_path.write_bytes(built.release.manifest.read_bytes())
    inst.signature_path.write_bytes(built.release.signature.read_bytes())
    return inst


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("release")
    key = Ed25519PrivateKey.generate()
    out = tmp / "out"
    r = build_release(repo=REPO, out=out, key=key, lock=small_lock(tmp / "small.lock"), python=sys.executable,
                      commit=HEAD)
    assert keys.verify(r.manifest.read_bytes(), r.signature.read_bytes(), key.public_key())
    return Built(r, key, out)


@pytest.fixture
def installed(built: Built, tmp_path: Path) -> Installed:
    return Installed(install_release(built, tmp_path / "venv"), built)
