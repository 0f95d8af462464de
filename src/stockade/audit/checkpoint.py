"""Signed checkpoints: `{seq, hash, ts}` signed with the audit Ed25519 key.

A linear hash chain only proves integrity relative to a trusted head: someone who truncates
the tail, or rewrites the whole log, produces a valid chain. A checkpoint kept elsewhere
(`stockade audit checkpoint export`) pins the head: the log must still contain `seq` with
exactly `hash`, and nobody without the private key can make a new one.

Signed message (v2): b"stockade-audit-checkpoint/v2\\n" || deterministic-CBOR({"seq", "hash", "ts",
"reason", "file"} plus a prune's "retention_days" and "record"). v1 (seq, hash, ts only) still
verifies, but a v1 checkpoint never starts the chain: its reason was not signed.
`audit/checkpoints.log` holds one JSON object per line:
  {"v": 1, "seq": N, "hash": hex, "ts": µs, "reason": "periodic|shutdown|prune|manual|offline",
   "file": "YYYY-MM-DD.log", "key": base64(raw public key), "sig": base64(signature)}
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.core.encoding import write_all

PREFIX = b"stockade-audit-checkpoint/v1\n"
PREFIX2 = b"stockade-audit-checkpoint/v2\n"
SIGNED_EXTRA = frozenset({"retention_days", "record"})   # optional integer facts a v2 checkpoint signs
LOG_NAME = "checkpoints.log"
KEY_NAME = "audit_ed25519.key"
PUB_NAME = "audit_ed25519.pub"


def message(seq: int, digest: bytes, ts: int) -> bytes:
    """The v1 signed message: seq, hash and time only (its reason and file are not signed)."""
    return PREFIX + cbor2.dumps({"seq": seq, "hash": digest, "ts": ts}, canonical=True)


def message2(seq: int, digest: bytes, ts: int, reason: str, file: str | None, extra: dict[str, int]) -> bytes:
    """The v2 signed message: also the reason, the day file and the prune's facts.

    Why: a prune checkpoint lets the chain start after seq 1; if its reason were unsigned, anyone
    could relabel a periodic checkpoint as a prune and delete the records before it.
    """
    return PREFIX2 + cbor2.dumps({"seq": seq, "hash": digest, "ts": ts, "reason": reason, "file": file, **extra},
                                 canonical=True)


def make(key: Ed25519PrivateKey, seq: int, digest: bytes, ts: int, reason: str, file: str | None,
         **extra: int) -> dict[str, Any]:
    """A v2 checkpoint; `extra` (only SIGNED_EXTRA keys) is signed too, e.g. a prune's retention_days."""
    assert set(extra) <= SIGNED_EXTRA  # noqa: S101  (a programming error, not input)
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = key.sign(message2(seq, digest, ts, reason, file, extra))
    return {"v": 2, "seq": seq, "hash": digest.hex(), "ts": ts, "reason": reason, "file": file, **extra,
            "key": base64.b64encode(pub).decode(), "sig": base64.b64encode(sig).decode()}


def signed_message(c: dict[str, Any], seq: int, digest: bytes, ts: int) -> bytes:
    """What the signature of checkpoint `c` covers (by its version); ValueError if malformed."""
    if c.get("v", 1) == 1:
        return message(seq, digest, ts)
    if c.get("v") != 2:
        raise ValueError(f"unknown checkpoint version {c.get('v')!r}")
    reason, file = c.get("reason"), c.get("file")
    extra = {k: c[k] for k in SIGNED_EXTRA if k in c}
    if not isinstance(reason, str) or not (file is None or isinstance(file, str)) \
            or not all(type(v) is int for v in extra.values()):
        raise ValueError("missing or invalid reason/file")
    return message2(seq, digest, ts, reason, file, extra)


def prune_info(c: dict[str, Any]) -> dict[str, Any] | None:
    """The signed facts of a prune checkpoint (v2, reason "prune"); None for any other checkpoint."""
    if c.get("v") != 2 or c.get("reason") != "prune" or not isinstance(c.get("file"), str) \
            or type(c.get("retention_days")) is not int:
        return None
    return {"file": c["file"], "ts": c["ts"], "retention_days": c["retention_days"], "record": c.get("record")}


def check(c: Any, pubkey: bytes | None) -> tuple[int, bytes]:
    """(seq, hash) of a valid checkpoint; ValueError with the reason otherwise.

    `pubkey` None: check against the key embedded in the checkpoint (an exported copy)."""
    if not isinstance(c, dict):
        raise ValueError("not a checkpoint object")
    seq, h, ts, sig, key = c.get("seq"), c.get("hash"), c.get("ts"), c.get("sig"), c.get("key")
    if type(seq) is not int or seq < 1 or type(ts) is not int or not isinstance(h, str) or not isinstance(sig, str):
        raise ValueError("missing or invalid seq/hash/ts/sig")
    try:
        digest = bytes.fromhex(h)
        raw_sig = base64.b64decode(sig, validate=True)
        embedded = base64.b64decode(key, validate=True) if isinstance(key, str) else None
    except ValueError:
        raise ValueError("hash/sig/key are not valid hex/base64") from None
    if len(digest) != 32:
        raise ValueError("hash is not 32 bytes")
    if pubkey is not None and embedded is not None and embedded != pubkey:
        raise ValueError("signed with a different key than this home's audit key")
    use = pubkey if pubkey is not None else embedded
    if use is None or len(use) != 32:
        raise ValueError("no public key to check the signature with")
    try:
        Ed25519PublicKey.from_public_bytes(use).verify(raw_sig, signed_message(c, seq, digest, ts))
    except (InvalidSignature, ValueError):
        raise ValueError(f"bad signature on the checkpoint for seq {seq}") from None
    return seq, digest


def read_log(path: Path) -> list[Any]:
    """Entries of checkpoints.log (a line that is not JSON becomes {"_bad": line number})."""
    out: list[Any] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"_bad": i})
    return out


def load_valid(path: Path, pubkey: bytes | None,
               prunes: dict[int, dict[str, Any]] | None = None) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
    """Valid checkpoints as seq -> hash, and the invalid ones with the reason.

    `prunes` (if given) receives seq -> `prune_info` of each valid prune checkpoint."""
    good: dict[int, bytes] = {}
    bad: list[dict[str, Any]] = []
    if pubkey is None:
        return good, bad
    for i, c in enumerate(read_log(path), 1):
        if isinstance(c, dict) and "_bad" in c:
            bad.append({"seq": None, "error": f"{LOG_NAME} line {c['_bad']}: not JSON"})
            continue
        try:
            seq, digest = check(c, pubkey)
        except ValueError as e:
            bad.append({"seq": c.get("seq") if isinstance(c, dict) else None, "error": f"{LOG_NAME} entry {i}: {e}"})
            continue
        if seq in good and good[seq] != digest:
            bad.append({"seq": seq, "error": f"two signed checkpoints disagree about seq {seq}"})
        good[seq] = digest
        info = prune_info(c)
        if prunes is not None and info is not None:
            prunes[seq] = info
    return good, bad


def latest(path: Path) -> dict[str, Any] | None:
    entries = [c for c in read_log(path) if isinstance(c, dict) and type(c.get("seq")) is int]
    return max(entries, key=lambda c: c["seq"]) if entries else None


def append(path: Path, c: dict[str, Any]) -> None:
    """Append one checkpoint durably (fsync the file; the directory when it was created)."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, (json.dumps(c, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- keys ---------------------------------------------------------------------------------------
def create_keys(keys_dir: Path) -> list[str]:
    """Create the audit key pair if absent (private 0600, PKCS8 PEM; public PEM)."""
    from stockade.core.home import write_private

    priv_path, pub_path = keys_dir / KEY_NAME, keys_dir / PUB_NAME
    if priv_path.exists():
        return []
    key = Ed25519PrivateKey.generate()
    write_private(priv_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    write_private(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    with contextlib.suppress(OSError):
        fsync_dir(keys_dir)
    return [str(priv_path), str(pub_path)]


def load_private(keys_dir: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((keys_dir / KEY_NAME).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{keys_dir / KEY_NAME} is not an Ed25519 key")
    return key


def load_public(keys_dir: Path) -> bytes | None:
    try:
        key = serialization.load_pem_public_key((keys_dir / PUB_NAME).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
