"""The publisher's Ed25519 key: the public half is pinned here and in docs/supply-chain.md.

Every function that verifies takes the public key as a parameter; the CLI and the gateway pass
`PUBLISHER_KEY` and nothing else (there is no option to trust another key). The private key never
enters the repository: the releaser passes its path to `stockade release build --key FILE`.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.core.errors import err

# The project's release signing key (raw Ed25519 public key, base64). Rotating it is a release.
PUBLISHER_KEY_B64 = "wAXO+u+owbwvUwb9WDv/ydHCH2iSOmrQg7shMvLEM7E="
SIG_PREFIX = b"stockade-release-manifest-v1\n"   # domain separation: a manifest signature signs nothing else


def public_key(b64: str = PUBLISHER_KEY_B64) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))


PUBLISHER_KEY = public_key()


def key_id(key: Ed25519PublicKey) -> str:
    """A short, printable name for a public key (its raw bytes, base64)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


PASSPHRASE_ENV = "STOCKADE_RELEASE_KEY_PASSPHRASE"  # noqa: S105 (the variable's name, not a passphrase)


def load_private(path: Path) -> Ed25519PrivateKey:
    """The releaser's key from a PEM file (optionally encrypted; passphrase from the environment)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise err("InvalidInput", f"cannot read the publisher key {path}: {e.strerror}") from None
    pw = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, pw.encode() if pw else None)
    except (ValueError, TypeError) as e:
        raise err("InvalidInput", f"{path} is not a usable PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise err("InvalidInput", f"{path} is not an Ed25519 key")
    return key


def sign(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """The detached signature file's content: base64 of the Ed25519 signature, one line."""
    return base64.b64encode(key.sign(SIG_PREFIX + manifest)) + b"\n"


def verify(manifest: bytes, signature: bytes, key: Ed25519PublicKey) -> bool:
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, SIG_PREFIX + manifest)
    except (InvalidSignature, ValueError):
        return False
    return True
