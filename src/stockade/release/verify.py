"""Is this install exactly the signed release? (`doctor --verify-install` and the gateway's start check)

Order: the signature over the manifest bytes with the pinned key first (nothing in an unsigned
manifest is believed), then every file of site-packages: a listed file must have the listed SHA-256
and size; a `__pycache__/*.pyc` must be the compiled form of its verified source (`pyc.py`); the
installer's own dist-info files (RECORD, INSTALLER, REQUESTED, direct_url.json) are allowed for
listed distributions, and a RECORD that disagrees with the manifest is reported (an attacker who
rewrites a file and its RECORD is caught by the manifest's hash either way); anything else is extra.
Then the `.data` files (scripts, headers, data), the console-script launchers the installer
generated (they must be the installer's template for a listed entry point), and the versions.

pip itself (which `python -m venv` puts there and which is not in the lock) is checked against its
own RECORD only and listed as `tooling`; the gateway never imports it.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.core.errors import StockadeError
from stockade.release import keys, manifest, pyc

TOOLING = ("pip",)
MARKER = "stockade/release/_build.py"   # present only in wheels built by `stockade release build`
_LIMIT = 200                            # items shown per list


@dataclass(frozen=True)
class Install:
    """Where one Python environment's files live (a venv, or any prefix)."""

    prefix: Path
    purelib: Path
    platlib: Path
    scripts: Path
    data: Path
    headers: Path   # pip's `{headers}` base: PREFIX/include/site/pythonX.Y/<dist>

    @classmethod
    def at(cls, prefix: Path) -> Install:
        p = sysconfig.get_paths("posix_prefix", vars={"base": str(prefix), "platbase": str(prefix)})
        ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        return cls(prefix, Path(p["purelib"]), Path(p["platlib"]), Path(p["scripts"]), Path(p["data"]),
                   prefix / "include" / "site" / ver)

    @classmethod
    def current(cls) -> Install:
        return cls.at(Path(sys.prefix))

    @property
    def manifest_path(self) -> Path:
        return self.prefix / "share" / "stockade" / "release" / "manifest.json"

    @property
    def signature_path(self) -> Path:
        return self.manifest_path.with_name("manifest.json.sig")


@dataclass
class Findings:
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    pycache: list[str] = field(default_factory=list)
    record: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    tooling: list[str] = field(default_factory=list)
    checked: int = 0

    def bad(self) -> bool:
        return bool(self.modified or self.missing or self.extra or self.pycache or self.record or self.versions)


def _project(dist_info: str) -> str:
    """`Name-1.0.dist-info` -> `Name`."""
    return dist_info[: -len(".dist-info")].rsplit("-", 1)[0]


def _sha(p: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _record_rows(path: Path) -> list[tuple[str, str]]:
    """(path, sha256 hex or '') for each RECORD row."""
    rows = []
    for row in csv.reader(io.StringIO(path.read_text(errors="replace"))):
        if not row:
            continue
        digest = ""
        if len(row) > 1 and row[1].startswith("sha256="):
            raw = row[1][7:]
            try:
                digest = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
            except ValueError:
                digest = "undecodable"
        rows.append((row[0], digest))
    return rows


def _expected(m: dict[str, Any], inst: Install) -> tuple[dict[Path, tuple[str, int, str]], dict[str, Path]]:
    """Absolute path -> (sha256, size, dist) for every listed file; and dist -> its dist-info dir."""
    out: dict[Path, tuple[str, int, str]] = {}
    info: dict[str, Path] = {}
    for name, d in m["distributions"].items():
        info[name] = inst.purelib / d["dist_info"]
        proj = _project(d["dist_info"])
        for key, (digest, size) in d["files"].items():
            out[_place(key, inst, proj)] = (digest, size, name)
    return out, info


def _place(key: str, inst: Install, project: str) -> Path:
    for prefix, base in (("{scripts}/", inst.scripts), ("{data}/", inst.data), ("{headers}/", inst.headers / project)):
        if key.startswith(prefix):
            return base / key[len(prefix):]
    return inst.purelib / key


def _check_file(p: Path, want: tuple[str, int, str], f: Findings) -> None:
    f.checked += 1
    try:
        digest, size = _sha(p)
    except OSError:
        f.missing.append(f"{p} ({want[2]}): cannot be read")
        return
    if (digest, size) != want[:2]:
        f.modified.append(f"{p} ({want[2]}): SHA-256 {digest[:16]}… size {size}, the manifest says "
                          f"{want[0][:16]}… size {want[1]}")


def _check_script(p: Path, want: tuple[str, int, str], f: Findings) -> None:
    """A `.data/scripts` file; pip rewrites a `#!python` first line to this environment's python."""
    f.checked += 1
    data = p.read_bytes()
    if data.startswith(b"#!") and b"\n" in data and (hashlib.sha256(data).hexdigest(), len(data)) != want[:2]:
        first, rest = data.split(b"\n", 1)
        if not _our_python(first, p.parent):
            f.modified.append(f"{p} ({want[2]}): its first line is not this environment's python")
            return
        data = b"#!python\n" + rest
    if (hashlib.sha256(data).hexdigest(), len(data)) != want[:2]:
        f.modified.append(f"{p} ({want[2]}): not the script the release ships")


def _our_python(shebang: bytes, scripts: Path) -> bool:
    target = shebang[2:].strip().decode(errors="replace")
    return os.path.dirname(target) == str(scripts) and os.path.basename(target).startswith("python")


def _judge_pyc(p: Path, verified: set[Path], f: Findings) -> None:
    f.checked += 1
    src = pyc.source_of(p)
    if src is None:
        f.pycache.append(f"{p}: not a cache file of this Python for a listed source (refused)")
    elif src[0] not in verified:
        f.pycache.append(f"{p}: its source {src[0].name} is not a verified file of the release (refused)")
    else:
        why = pyc.judge(p.read_bytes(), src[0].read_bytes(), src[0], src[1])
        if why:
            f.pycache.append(f"{p}: {why}")


def _check_record(p: Path, dist: str, m: dict[str, Any], inst: Install, f: Findings) -> None:
    files = m["distributions"][dist]["files"]
    for rel, digest in _record_rows(p):
        key = os.path.normpath(rel)
        if key.startswith("..") or "__pycache__" in key or os.path.basename(key) in manifest.INSTALLER_WRITTEN:
            continue
        if key not in files:
            f.record.append(f"{p}: lists {rel}, which the release does not ship")
        elif digest and digest != files[key][0]:
            f.record.append(f"{p}: its hash for {rel} is not the signed manifest's (RECORD rewritten?)")


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        out.extend(Path(dirpath) / n for n in sorted(files))
        out.extend(Path(dirpath) / d for d in dirs if os.path.islink(os.path.join(dirpath, d)))
    return out


def _tooling(inst: Install) -> tuple[set[Path], set[Path]]:
    """pip's own files, as its RECORD lists them: (hash-checked ok, hash mismatch)."""
    ok: set[Path] = set()
    bad: set[Path] = set()
    for info in inst.purelib.glob("*.dist-info"):
        if manifest.norm_name(_project(info.name)) not in TOOLING or not (info / "RECORD").is_file():
            continue
        for rel, digest in _record_rows(info / "RECORD"):
            p = Path(os.path.normpath(inst.purelib / rel))
            if digest and p.is_file() and _sha(p)[0] != digest:
                bad.add(p)
            else:
                ok.add(p)
    return ok, bad


def _check_site(m: dict[str, Any], inst: Install, f: Findings) -> None:
    expected, infos = _expected(m, inst)
    info_dist = {p: name for name, p in infos.items()}
    tool_ok, tool_bad = _tooling(inst)
    seen: set[Path] = set()
    pycs = []
    for p in _walk(inst.purelib) + (_walk(inst.platlib) if inst.platlib != inst.purelib else []):
        if p in expected and not p.is_symlink():
            seen.add(p)
            _check_file(p, expected[p], f)
        elif p.parent.name == "__pycache__" and p.suffix == ".pyc" and not p.is_symlink():
            pycs.append(p)
        elif p.parent in info_dist and p.name in manifest.INSTALLER_WRITTEN and not p.is_symlink():
            if p.name == "RECORD":
                _check_record(p, info_dist[p.parent], m, inst, f)
        elif p in tool_bad:
            f.modified.append(f"{p} (pip): differs from pip's RECORD")
        elif p in tool_ok:
            f.tooling.append(str(p))
        else:
            f.extra.append(f"{p}: not part of the release" + (" (a symlink)" if p.is_symlink() else ""))
    verified = {p for p in seen if p.suffix == ".py"} - {Path(s.split(" (")[0]) for s in f.modified}
    for p in pycs:
        _judge_pyc(p, verified, f)
    for p, want in expected.items():
        if p in seen:
            continue
        if not p.exists():
            f.missing.append(f"{p} ({want[2]})")
        elif str(p).startswith(str(inst.scripts) + os.sep):
            _check_script(p, want, f)
        else:
            _check_file(p, want, f)


def _check_versions(m: dict[str, Any], inst: Install, f: Findings) -> None:
    listed = {d["dist_info"] for d in m["distributions"].values()}
    for info in sorted(inst.purelib.glob("*.dist-info")):
        name = manifest.norm_name(_project(info.name))
        if info.name in listed or name in TOOLING:
            continue
        want = m["distributions"].get(name)
        f.versions.append(f"{info.name}: " + (f"the release has {want['version']}" if want else
                                                "a distribution the release does not contain"))
    for name, d in m["distributions"].items():
        if not (inst.purelib / d["dist_info"]).is_dir():
            f.versions.append(f"{name} {d['version']}: not installed")


def _console_scripts(m: dict[str, Any], inst: Install) -> dict[str, str]:
    """name -> 'module:attr' for every console/gui script of the (already verified) entry_points.txt."""
    out: dict[str, str] = {}
    for d in m["distributions"].values():
        ep = inst.purelib / d["dist_info"] / "entry_points.txt"
        if f"{d['dist_info']}/entry_points.txt" not in d["files"] or not ep.is_file():
            continue
        cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            cp.read_string(ep.read_text())
        except configparser.Error:
            continue
        for section in ("console_scripts", "gui_scripts"):
            if cp.has_section(section):
                out.update({k.strip(): v.split("[")[0].strip() for k, v in cp.items(section)})
    return out


def launcher(shebang: str, target: str) -> str:
    """The launcher pip (distlib) writes for an entry point `module:attr`."""
    module, _, attr = target.partition(":")
    head = attr.split(".")[0]
    return (f"#!{shebang}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {head}\n"
            f"if __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            f"    sys.exit({attr}())\n")


def _check_launchers(m: dict[str, Any], inst: Install, f: Findings) -> None:
    for name, target in sorted(_console_scripts(m, inst).items()):
        p = inst.scripts / name
        if not p.exists():
            continue   # a launcher the owner removed runs nothing
        f.checked += 1
        text = p.read_bytes().decode(errors="replace")
        first = text.split("\n", 1)[0].encode()
        if not _our_python(first, inst.scripts) or text != launcher(first[2:].decode().strip(), target):
            f.modified.append(f"{p}: not the installer's launcher for {target}")


def verify(inst: Install, manifest_bytes: bytes, signature: bytes, key: Ed25519PublicKey) -> dict[str, Any]:
    """The full check of INST against a signed manifest; `key` is the publisher key (the CLI's: pinned)."""
    if not keys.verify(manifest_bytes, signature, key):
        return _report("critical", f"the release manifest {inst.manifest_path} is not signed by the publisher key "
                       f"{keys.key_id(key)}: nothing in it is trusted", signature=False, key=keys.key_id(key))
    try:
        m = manifest.parse(manifest_bytes)
    except StockadeError as e:
        return _report("critical", f"the signed manifest is unreadable: {e.message}", signature=True,
                       key=keys.key_id(key))
    f = Findings()
    _check_site(m, inst, f)
    _check_versions(m, inst, f)
    _check_launchers(m, inst, f)
    msg = _summary(f) if f.bad() else f"stockade {m['version']} matches its signed release ({f.checked} files)"
    return _report("critical" if f.bad() else "ok", msg, signature=True, release=m["version"],
                   commit=m.get("commit"), findings=f, key=keys.key_id(key))


def _summary(f: Findings) -> str:
    parts = [f"{len(v)} {k}" for k, v in (("modified", f.modified), ("missing", f.missing), ("extra", f.extra),
                                          ("bad .pyc", f.pycache), ("RECORD mismatches", f.record),
                                          ("version mismatches", f.versions)) if v]
    first = next(iter(f.modified + f.missing + f.extra + f.pycache + f.record + f.versions))
    return "the install does not match its signed release: " + ", ".join(parts) + f"; first: {first}"


def _report(status: str, message: str, *, signature: bool | None = None, release: str | None = None,
            commit: str | None = None, findings: Findings | None = None, verified: bool = True,
            key: str | None = None) -> dict[str, Any]:
    f = findings or Findings()
    return {"status": status, "verified": verified and status == "ok", "message": message, "release": release,
            "commit": commit, "signature_ok": signature, "key": key,
            "files_checked": f.checked, "modified": f.modified[:_LIMIT], "missing": f.missing[:_LIMIT],
            "extra": f.extra[:_LIMIT], "pycache": f.pycache[:_LIMIT], "record": f.record[:_LIMIT],
            "versions": f.versions[:_LIMIT], "tooling_files": len(f.tooling)}


def check(inst: Install, key: Ed25519PublicKey) -> dict[str, Any]:
    """`verify` with the install's own manifest; a development install (none) is reported as such."""
    mpath, spath = inst.manifest_path, inst.signature_path
    if not mpath.exists():
        if (inst.purelib / MARKER).exists():
            return _report("critical", f"a signed-release install without its manifest ({mpath} is missing)")
        return _report("unverified", "development install (editable or not from a signed release): there is no "
                       f"signed manifest at {mpath}, so NOTHING was verified", verified=False)
    try:
        body, sig = mpath.read_bytes(), spath.read_bytes()
    except OSError as e:
        return _report("critical", f"cannot read the release manifest or its signature: {e}")
    return verify(inst, body, sig, key)
