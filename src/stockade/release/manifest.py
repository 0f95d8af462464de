"""The release manifest: what a release puts on disk, as canonical bytes (pure; no I/O but reading wheels).

A manifest names every distribution of a release (stockade's own wheel and each locked dependency's),
the wheel it comes from (file name, SHA-256, size) and every file its install writes, keyed by where
it lands: a path relative to site-packages, or `{scripts}/NAME`, `{headers}/NAME`, `{data}/PATH` for
a wheel's `.data` directories. Files that the installer itself writes (the dist-info's RECORD,
INSTALLER, REQUESTED, direct_url.json, console-script launchers, `__pycache__`) are not listed:
`verify.py` judges them against what is listed.

The canonical encoding (sorted keys, no spaces, ASCII, one trailing newline) makes the same release
the same bytes, which is what is signed and what the reproducibility test compares.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import PurePosixPath
from typing import Any

from stockade.core.encoding import canonical_json
from stockade.core.errors import err

FORMAT = "stockade-release/1"
MANIFEST_MAX_BYTES = 64 << 20
INSTALLER_WRITTEN = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
_DATA_SCHEMES = {"purelib": "", "platlib": "", "scripts": "{scripts}/", "headers": "{headers}/", "data": "{data}/"}
_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?$")
FileEntry = list[Any]   # [sha256 hex, size]


def canonical(obj: Any) -> bytes:
    return canonical_json(obj, ascii=True, allow_nan=True).encode() + b"\n"


def norm_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install_key(name: str, data_dir: str) -> str | None:
    """Where a wheel member lands, as a manifest key; None for a directory or the wheel's RECORD."""
    if name.endswith("/"):
        return None
    parts = PurePosixPath(name).parts
    if ".." in parts or name.startswith("/"):
        raise err("InvalidInput", f"wheel member {name!r} escapes the install directory")
    if parts[0] == data_dir and len(parts) > 2:
        scheme = parts[1]
        if scheme not in _DATA_SCHEMES:
            raise err("InvalidInput", f"wheel member {name!r}: unknown install scheme {scheme!r}")
        return _DATA_SCHEMES[scheme] + "/".join(parts[2:])
    if parts[0].endswith(".dist-info") and len(parts) == 2 and parts[1] in ("RECORD", "RECORD.jws", "RECORD.p7s"):
        return None
    return name


def read_wheel(filename: str, data: bytes) -> dict[str, Any]:
    """One distribution's manifest entry from its wheel's bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        dist_info = sorted({i.filename.split("/")[0] for i in infos if i.filename.split("/")[0].endswith(".dist-info")})
        if len(dist_info) != 1:
            raise err("InvalidInput", f"{filename}: expected one .dist-info directory, found {dist_info}")
        stem = dist_info[0][: -len(".dist-info")]
        name, _, version = stem.rpartition("-")
        data_dir = f"{stem}.data"
        files: dict[str, FileEntry] = {}
        for info in infos:
            key = _install_key(info.filename, data_dir)
            if key is None:
                continue
            content = z.read(info)
            files[key] = [sha256(content), len(content)]
    return {"name": norm_name(name), "version": version, "dist_info": dist_info[0],
            "wheel": {"file": filename, "sha256": sha256(data), "size": len(data)}, "files": files}


def build(*, version: str, commit: str, source_date_epoch: int, python_tag: str,
          lock_sha256: str, distributions: list[dict[str, Any]]) -> dict[str, Any]:
    dists = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in distributions}
    if "stockade" not in dists:
        raise err("InvalidInput", "a release manifest needs stockade's own wheel")
    return {"format": FORMAT, "name": "stockade", "version": version, "commit": commit,
            "source_date_epoch": source_date_epoch, "python": python_tag, "lock_sha256": lock_sha256,
            "distributions": dists}


def parse(data: bytes) -> dict[str, Any]:
    """A manifest's bytes, checked for shape (the signature is checked separately, first)."""
    if len(data) > MANIFEST_MAX_BYTES:
        raise err("InvalidInput", "the release manifest is too large")
    try:
        m = json.loads(data)
    except ValueError as e:
        raise err("InvalidInput", f"the release manifest is not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise err("InvalidInput", f"not a {FORMAT} manifest")
    if not isinstance(m.get("version"), str) or parse_version(m["version"]) is None:
        raise err("InvalidInput", "the release manifest has no valid version")
    dists = m.get("distributions")
    if not isinstance(dists, dict) or "stockade" not in dists:
        raise err("InvalidInput", "the release manifest lists no stockade distribution")
    for name, d in dists.items():
        ok = isinstance(d, dict) and isinstance(d.get("version"), str) and isinstance(d.get("files"), dict) \
            and isinstance(d.get("dist_info"), str) and isinstance(d.get("wheel"), dict)
        if not ok or not all(isinstance(v, list) and len(v) == 2 for v in d["files"].values()):
            raise err("InvalidInput", f"the release manifest's entry for {name!r} is malformed")
    return m


def parse_version(v: str) -> tuple[Any, ...] | None:
    """A PEP 440 public version as a sortable tuple (the forms stockade releases use); None if not one."""
    m = _VERSION.match(v)
    if not m:
        return None
    release = tuple(int(x) for x in m.group(1).split("."))
    release = release + (0,) * (8 - len(release)) if len(release) < 8 else release
    pre = ({"a": 0, "b": 1, "rc": 2}[m.group(2)], int(m.group(3))) if m.group(2) else (3, 0)
    post = int(m.group(4)) if m.group(4) is not None else -1
    dev = int(m.group(5)) if m.group(5) is not None else 1 << 62
    if m.group(5) is not None and not m.group(2) and m.group(4) is None:
        pre = (-1, 0)   # 1.0.dev1 sorts before 1.0a1
    return (release, pre, post, dev)


def is_newer(candidate: str, installed: str) -> bool:
    a, b = parse_version(candidate), parse_version(installed)
    if a is None or b is None:
        raise err("InvalidInput", f"cannot compare versions {candidate!r} and {installed!r}")
    return a > b
