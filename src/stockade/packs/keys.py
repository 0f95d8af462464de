"""Publisher key files: `PREFIX.key` (PKCS#8 PEM, 0600, optionally passphrase-encrypted) and
`PREFIX.pub` (one line: `stockade-pack-ed25519 <base64 raw key> <key id>`)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.core.errors import err
from stockade.packs.manifest import key_id

PUB_TAG = "stockade-pack-ed25519"


def keygen(prefix: Path, passphrase: bytes | None = None) -> tuple[Path, Path, str]:
    key = Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    kpath, ppath = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (kpath, ppath):
        if p.exists():
            raise err("InvalidInput", f"{p} already exists; refusing to overwrite a key")
    fd = os.open(kpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    ppath.write_text(public_line(key.public_key()) + "\n")
    return kpath, ppath, key_id(key.public_key())


def public_line(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{PUB_TAG} {base64.b64encode(raw).decode()} {key_id(pub)}"


def load_private(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise err("InvalidInput", f"cannot read key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        raise err("InvalidInput", f"{path} is encrypted: pass --passphrase-file or STOCKADE_PACK_PASSPHRASE") from None
    except ValueError:
        raise err("InvalidInput", f"{path}: not an Ed25519 private key, or wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise err("InvalidInput", f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> tuple[bytes, str]:
    """(raw key, key id) from a .pub file."""
    try:
        parts = path.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise err("InvalidInput", f"cannot read public key {path}: {e}") from None
    if len(parts) < 2 or parts[0] != PUB_TAG:
        raise err("InvalidInput", f"{path}: not a stockade pack public key")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        pub = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise err("InvalidInput", f"{path}: malformed public key") from None
    return raw, key_id(pub)
