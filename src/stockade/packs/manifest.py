"""The pack format (DESIGN.md §7) as pure functions over bytes.

A pack is `pack.yaml` + `src/**.py` + optional `requirements.lock` + `SIGNATURE`. The signature
covers a canonical manifest: the pack's name, version, optional expiry and, for every file except
SIGNATURE, its path, size and SHA-256. Verification recomputes that manifest from the bytes at
hand and requires it to equal the signed one exactly, so a changed, added or removed file, a
swapped signature or an older signed version is refused with the file it concerns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockade import yamlfile
from stockade.capabilities.registry import NAME_PATTERN
from stockade.errors import ConfigError, StockadeError

SIGNATURE_FORMAT = "stockade-pack-signature/1"
DOMAIN = b"stockade-pack-manifest-v1\n"   # domain separation: these bytes sign nothing else
PACK_NAME = r"^[a-z][a-z0-9-]{0,47}$"
VERSION = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"
MAX_FILES = 2000
MAX_PACK_BYTES = 64 * 1024 * 1024


class PackError(StockadeError):
    """PackSignatureInvalid (or InvalidInput for malformed packs), always naming the file."""


def pack_error(message: str, file: str | None = None, type_: str = "PackSignatureInvalid") -> PackError:
    return PackError(type_, f"{file}: {message}" if file else message, None, {"file": file} if file else {})


# -- pack.yaml -----------------------------------------------------------------------------------
class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    egress: list[str] = []
    memory: str | int | None = None
    seccomp: Literal["default", "strict"] = "default"
    timeout: float | None = Field(None, gt=0, le=600)


class _Capability(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    entry: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
    purpose: str = Field(min_length=1)
    when_to_use: str = Field(min_length=1)
    default_tier: Literal["autonomous", "notify", "approval_required", "blocked"] = "notify"
    side_effects: bool = True
    secrets: bool = False
    input: dict[str, Any]
    output: dict[str, Any]
    errors: list[str] = []


class PackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=PACK_NAME)
    version: str = Field(pattern=VERSION)
    publisher: str = Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")
    min_stockade: str = Field("0.0.0", pattern=VERSION)
    description: str = ""
    capabilities: list[_Capability] = Field(min_length=1)
    sandbox: _Profile = _Profile()


def parse_pack_yaml(text: str, fname: str = "pack.yaml") -> PackSpec:
    data, lines = yamlfile.loads(text, fname)
    if not isinstance(data, dict):
        raise ConfigError([f"{fname}:1: expected a mapping"])
    try:
        spec = PackSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, fname, lines)) from None
    errors = []
    for i, c in enumerate(spec.capabilities):
        if not c.name.startswith(f"{spec.name.replace('-', '_')}."):
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('capabilities', i, 'name'))}: capability "
                          f"{c.name!r} must be named '{spec.name.replace('-', '_')}.<action>'")
    if len({c.name for c in spec.capabilities}) != len(spec.capabilities):
        errors.append(f"{fname}:1: duplicate capability names")
    if errors:
        raise ConfigError(errors)
    return spec


def version_tuple(v: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v.split("."))
    return a, b, c


# -- file set rules ---------------------------------------------------------------------------------
_ALLOWED = re.compile(r"^(pack\.yaml|requirements\.lock|README(\.md)?|LICENSE(\.txt)?|src/([A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py|"
                      r"data/([A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+)$")


def check_path(path: str) -> None:
    """Pure: a path allowed inside a pack (POSIX, relative, no `..`, no bytecode, known places)."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise pack_error("not a relative POSIX path", path, "InvalidInput")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise pack_error("path has empty, '.' or '..' components", path, "InvalidInput")
    if "__pycache__" in parts or path.endswith((".pyc", ".pyo", ".so", ".pth")):
        raise pack_error("compiled code, native modules and .pth files are not allowed in a pack", path,
                         "InvalidInput")
    if not _ALLOWED.match(path):
        raise pack_error("unexpected file (allowed: pack.yaml, requirements.lock, README, LICENSE, src/**.py, "
                         "data/**)", path, "InvalidInput")


def check_lockfile(text: str, fname: str = "requirements.lock") -> list[str]:
    """Pure: every requirement pinned `name==version` with at least one --hash=sha256:. Returns names."""
    names = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        logical.append((start, buf.strip()))
    for lineno, entry in logical:
        if entry.startswith("-"):
            raise pack_error(f"line {lineno}: options are not allowed in a pack lock ({entry.split()[0]})", fname,
                             "InvalidInput")
        req = entry.split()[0]
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$", req)
        if not m:
            raise pack_error(f"line {lineno}: {req!r} is not pinned as name==version", fname, "InvalidInput")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", entry)
        if not hashes:
            raise pack_error(f"line {lineno}: {req} has no --hash=sha256:", fname, "InvalidInput")
        names.append(m.group(1).lower())
    return names


# -- manifest -----------------------------------------------------------------------------------------
def build_manifest(name: str, version: str, files: dict[str, bytes], expires: str | None = None) -> dict[str, Any]:
    """Pure. `files` maps relative path -> content (SIGNATURE excluded)."""
    entries = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in sorted(files.items())]
    m: dict[str, Any] = {"pack": name, "version": version, "files": entries}
    if expires:
        m["expires"] = expires
    return m


def canonical(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign(manifest: dict[str, Any], private: Ed25519PrivateKey) -> bytes:
    """The SIGNATURE file's bytes."""
    sig = private.sign(DOMAIN + canonical(manifest))
    doc = {"format": SIGNATURE_FORMAT, "key_id": key_id(private.public_key()), "manifest": manifest,
           "signature": base64.b64encode(sig).decode()}
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Verified:
    spec: PackSpec
    manifest: dict[str, Any]
    key_id: str
    publisher: str
    manifest_sha256: str


def verify(files: dict[str, bytes], signature: bytes, trusted: dict[str, tuple[str, bytes]],
           now: datetime | None = None) -> Verified:
    """Pure. `trusted` maps key_id -> (publisher name, raw Ed25519 public key).

    Raises PackError naming the file that fails. Order: structure, signature over the signed
    manifest, then the recomputed manifest must equal it (so no unsigned byte is ever trusted)."""
    for p in files:
        check_path(p)
    try:
        doc = json.loads(signature)
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("unknown format")
        kid, signed, sig = doc["key_id"], doc["manifest"], base64.b64decode(doc["signature"], validate=True)
        if not isinstance(signed, dict) or not isinstance(kid, str):
            raise ValueError("bad types")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise pack_error("malformed signature file", "SIGNATURE") from None
    if kid not in trusted:
        raise pack_error(f"signed by key {kid}, which is not trusted (stockade pack trust)", "SIGNATURE")
    publisher, raw = trusted[kid]
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, DOMAIN + canonical(signed))
    except (InvalidSignature, ValueError):
        raise pack_error("signature does not verify", "SIGNATURE") from None
    if "pack.yaml" not in files:
        raise pack_error("missing", "pack.yaml", "InvalidInput")
    try:
        spec = parse_pack_yaml(files["pack.yaml"].decode("utf-8"))
    except (UnicodeDecodeError, ConfigError) as e:
        msg = "; ".join(e.errors) if isinstance(e, ConfigError) else "not UTF-8"
        raise pack_error(f"invalid: {msg}", "pack.yaml", "InvalidInput") from None
    actual = build_manifest(spec.name, spec.version, files, signed.get("expires"))
    _compare(signed, actual)
    if spec.publisher != publisher:
        raise pack_error(f"pack.yaml says publisher {spec.publisher!r} but the key is trusted as {publisher!r}",
                         "SIGNATURE")
    exp = signed.get("expires")
    if exp is not None:
        try:
            when = datetime.fromisoformat(exp.replace("Z", "+00:00"))
        except (ValueError, AttributeError):
            raise pack_error("malformed expiry", "SIGNATURE") from None
        if (now or datetime.now(UTC)) > when:
            raise pack_error(f"signature expired at {exp}", "SIGNATURE")
    if "requirements.lock" in files:
        check_lockfile(files["requirements.lock"].decode("utf-8", "replace"))
    return Verified(spec, signed, kid, publisher, hashlib.sha256(canonical(signed)).hexdigest())


def _compare(signed: dict[str, Any], actual: dict[str, Any]) -> None:
    if signed.get("pack") != actual["pack"] or signed.get("version") != actual["version"]:
        raise pack_error(f"signature is for {signed.get('pack')} {signed.get('version')}, "
                         f"pack.yaml says {actual['pack']} {actual['version']}", "SIGNATURE")
    want = {f["path"]: f for f in signed.get("files", []) if isinstance(f, dict)}
    have = {f["path"]: f for f in actual["files"]}
    for p in sorted(set(want) | set(have)):
        if p not in have:
            raise pack_error("listed in the signed manifest but missing", p)
        if p not in want:
            raise pack_error("not in the signed manifest (added after signing)", p)
        if want[p] != have[p]:
            raise pack_error("content differs from the signed manifest", p)
    if canonical(signed) != canonical({**actual, **({"expires": signed["expires"]} if "expires" in signed else {})}):
        raise pack_error("signed manifest has unexpected fields", "SIGNATURE")
