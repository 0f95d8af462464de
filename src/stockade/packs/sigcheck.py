"""The part of pack verification that runs in every sandboxed pack call, and nothing more.

Pure functions over bytes with only the standard library and the Ed25519 primitive, so the
sandbox child needs neither YAML nor pydantic: the file-set rules, the canonical manifest, the
signature check and the file-by-file comparison. `manifest.verify` (install time) builds on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.core.encoding import canonical_json
from stockade.core.errors import StockadeError

SIGNATURE_FORMAT = "stockade-pack-signature/1"
DOMAIN = b"stockade-pack-manifest-v1\n"   # domain separation: these bytes sign nothing else
MAX_FILES = 2000
MAX_PACK_BYTES = 64 * 1024 * 1024


class PackError(StockadeError):
    """PackSignatureInvalid (or InvalidInput for malformed packs), always naming the file."""


def pack_error(message: str, file: str | None = None, type_: str = "PackSignatureInvalid") -> PackError:
    return PackError(type_, f"{file}: {message}" if file else message, None, {"file": file} if file else {})


# -- file set rules ---------------------------------------------------------------------------------
_ALLOWED = re.compile(r"^(pack\.yaml|requirements\.lock|README(\.md)?|LICENSE(\.txt)?|"
                      r"src/([A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py|"
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


# -- manifest -----------------------------------------------------------------------------------------
def build_manifest(name: str, version: str, files: dict[str, bytes], expires: str | None = None) -> dict[str, Any]:
    """Pure. `files` maps relative path -> content (SIGNATURE excluded)."""
    entries = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in sorted(files.items())]
    m: dict[str, Any] = {"pack": name, "version": version, "files": entries}
    if expires:
        m["expires"] = expires
    return m


def canonical(manifest: dict[str, Any]) -> bytes:
    return canonical_json(manifest, allow_nan=True).encode()


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


def parse_signature(signature: bytes) -> tuple[str, dict[str, Any], bytes]:
    """(key id, signed manifest, raw signature) or PackError on SIGNATURE."""
    try:
        doc = json.loads(signature)
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("unknown format")
        kid, signed, sig = doc["key_id"], doc["manifest"], base64.b64decode(doc["signature"], validate=True)
        if not isinstance(signed, dict) or not isinstance(kid, str):
            raise ValueError("bad types")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise pack_error("malformed signature file", "SIGNATURE") from None
    return kid, signed, sig


def check_signature(signed: dict[str, Any], sig: bytes, raw_public: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(raw_public).verify(sig, DOMAIN + canonical(signed))
    except (InvalidSignature, ValueError):
        raise pack_error("signature does not verify", "SIGNATURE") from None


def verify_files(files: dict[str, bytes], signature: bytes, key_id_: str, raw_public: bytes,
                 name: str, version: str, now: float | None) -> dict[str, Any]:
    """Pure. The per-execution check: trusted key, valid signature, exactly these files, and a
    signature not expired at `now` (the gateway's clock, passed with the call: the sandbox child
    has no trustworthy clock of its own to consult, and without one nothing runs)."""
    for p in files:
        check_path(p)
    kid, signed, sig = parse_signature(signature)
    if kid != key_id_:
        raise pack_error(f"signed by key {kid}, not the trusted key {key_id_}", "SIGNATURE")
    check_signature(signed, sig, raw_public)
    actual = build_manifest(name, version, files, signed.get("expires"))
    _compare(signed, actual)
    check_expiry(signed, now)
    return signed


def check_expiry(signed: dict[str, Any], now: float | None) -> None:
    """Pure: refuse a signed manifest whose `expires` is past at `now` (POSIX seconds)."""
    exp = signed.get("expires")
    if exp is None:
        return
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise pack_error("no gateway clock to check the signature's expiry against", "SIGNATURE")
    try:
        when = datetime.fromisoformat(exp.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("naive")
    except (ValueError, AttributeError, TypeError):
        raise pack_error("malformed expiry", "SIGNATURE") from None
    if now > when.timestamp():
        raise pack_error(f"signature expired at {exp}", "SIGNATURE")


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
