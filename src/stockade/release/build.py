"""`stockade release build`: the same commit gives the same wheel, manifest and signature input.

Reproducible by construction: the wheel is built from `git archive COMMIT` (never the work tree, so
no stray build/ or egg-info leaks in), with SOURCE_DATE_EPOCH set to the commit's time and the
pinned setuptools/wheel from requirements.lock; the dependency wheels are the ones the lock pins by
hash; the manifest is canonical JSON with sorted keys. Ed25519 signatures are deterministic too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.core.errors import err
from stockade.release import keys, manifest

MARKER = "src/stockade/release/_build.py"   # written into the exported tree: "this install is a release"


@dataclass(frozen=True)
class Release:
    wheel: Path
    manifest: Path
    signature: Path
    version: str
    commit: str


def manifest_name(version: str) -> str:
    return f"stockade-{version}.manifest.json"


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(cmd, capture_output=True, check=False, **kw)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()[-5:]
        raise err("Internal", f"{' '.join(cmd[:4])} ... failed: " + " | ".join(tail))
    return p


def _git(repo: Path, *args: str) -> str:
    return _run(["git", "-C", str(repo), *args]).stdout.decode().strip()


def _export(repo: Path, commit: str, dest: Path) -> None:
    tar = dest.parent / "src.tar"
    with open(tar, "wb") as f:
        p = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], stdout=f, check=False)
    if p.returncode != 0:
        raise err("InvalidInput", f"git archive {commit} failed")
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")  # noqa: S202 (our own git archive, and the data filter)


def _build_env(epoch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(SOURCE_DATE_EPOCH=str(epoch), PYTHONHASHSEED="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", LC_ALL="C.UTF-8", TZ="UTC")
    return env


def _python_tag(python: str) -> str:
    out = _run([python, "-c", "import sys;print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"])
    return out.stdout.decode().strip()


def _download_locked(python: str, lock: Path, dest: Path, wheelhouse: Path | None, env: dict[str, str]) -> None:
    cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "--only-binary", ":all:",
           "-r", str(lock), "-d", str(dest)]
    if wheelhouse is not None:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    _run(cmd, env={**env, "PIP_NO_CACHE_DIR": "0"} if wheelhouse is None else env)


def build_release(*, repo: Path, out: Path, key: Ed25519PrivateKey, lock: Path | None = None,
                  commit: str = "HEAD", wheelhouse: Path | None = None, python: str = "python3",
                  progress: Callable[[str], None] = lambda _step: None) -> Release:
    """Build COMMIT of REPO into OUT: every wheel of the release, the manifest and its signature;
    `progress` is told each step (the CLI's progress line)."""
    python = os.path.abspath(python) if os.sep in python else python
    sha = _git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}")
    epoch = int(_git(repo, "log", "-1", "--format=%ct", sha))
    lock = lock or repo / "requirements.lock"
    env = _build_env(epoch)
    with tempfile.TemporaryDirectory(prefix="stockade-release-") as tmp:
        work = Path(tmp)
        src, wheels = work / "src", work / "wheels"
        src.mkdir()
        wheels.mkdir()
        progress(f"exporting {sha[:12]}")
        _export(repo, sha, src)
        (src / MARKER).parent.mkdir(parents=True, exist_ok=True)
        (src / MARKER).write_text(f'"""Written by `stockade release build`: this install is a signed release."""\n'
                                  f'COMMIT = "{sha}"\nSOURCE_DATE_EPOCH = {epoch}\n')
        progress("building the stockade wheel")
        _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
             env=env, cwd=src)
        own = sorted(wheels.glob("stockade-*.whl"))
        if len(own) != 1:
            raise err("Internal", f"expected one stockade wheel, built {[w.name for w in own]}")
        progress("fetching the locked wheels")
        _download_locked(python, lock, wheels, wheelhouse, env)
        progress("writing the signed manifest")
        dists = [manifest.read_wheel(w.name, w.read_bytes()) for w in sorted(wheels.glob("*.whl"))]
        version = next(d["version"] for d in dists if d["name"] == "stockade")
        body = manifest.canonical(manifest.build(
            version=version, commit=sha, source_date_epoch=epoch, python_tag=_python_tag(python),
            lock_sha256=hashlib.sha256(lock.read_bytes()).hexdigest(), distributions=dists))
        out.mkdir(parents=True, exist_ok=True)
        for w in sorted(wheels.glob("*.whl")):
            shutil.copyfile(w, out / w.name)
    mpath = out / manifest_name(version)
    mpath.write_bytes(body)
    spath = mpath.with_name(mpath.name + ".sig")
    spath.write_bytes(keys.sign(body, key))
    return Release(out / own[0].name, mpath, spath, version, sha)
