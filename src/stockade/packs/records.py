"""The development-install fallback of `doctor --verify-install`: RECORDs and the lock.

Without a signed release manifest nothing can be *verified* (an attacker who rewrites files can
rewrite RECORDs too), but a changed, missing or unpinned dependency is still worth catching:
checks every installed distribution's files against the SHA-256 in its RECORD (modified or
missing files), looks for files inside its packages that RECORD does not list (extra), and
compares installed versions with the pins in requirements.lock.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import metadata
from pathlib import Path
from typing import Any

LOCK = Path(__file__).resolve().parents[3] / "requirements.lock"
_IGNORED = {"stockade", "pip", "uv"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
            if m:
                pins[_norm(m.group(1))] = m.group(2)
    return pins


def _hash_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def record_check(lock: Path = LOCK) -> dict[str, Any]:
    pins = lock_pins(lock)
    modified: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    version_mismatch: list[str] = []
    unpinned: list[str] = []
    checked = 0
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"] or "")
        if name in _IGNORED:
            continue
        if pins and name not in pins:
            unpinned.append(name)
        elif pins and pins[name] != dist.version:
            version_mismatch.append(f"{name} {dist.version} (lock: {pins[name]})")
        files = dist.files or []
        listed: set[Path] = set()
        top_dirs: set[Path] = set()
        for f in files:
            p = Path(str(dist.locate_file(f))).resolve()
            listed.add(p)
            if f.parts and not f.parts[0].endswith((".dist-info", ".data")) and len(f.parts) > 1 and \
                    ".." not in f.parts:
                top_dirs.add(Path(str(dist.locate_file(f.parts[0]))).resolve())
            if f.hash is None:
                continue
            checked += 1
            if not p.exists():
                missing.append(str(p))
            elif f.hash.mode == "sha256" and _hash_file(p) != f.hash.value:
                modified.append(str(p))
        for d in top_dirs:
            if not d.is_dir():
                continue
            for p in d.rglob("*"):
                if p.is_file() and "__pycache__" not in p.parts and p.resolve() not in listed:
                    extra.append(str(p))
    ok = not (modified or missing or extra or version_mismatch or unpinned)
    return {"status": "ok" if ok else "critical", "files_checked": checked, "modified": sorted(modified),
            "missing": sorted(missing), "extra": sorted(extra)[:200], "version_mismatch": sorted(version_mismatch),
            "unpinned": sorted(unpinned)}
