"""The owner's side of the bargain: is sshd behind the perimeter configured strongly?

`sshd -T` prints the effective configuration; the checks on it and on public keys are pure.
Ed25519 (and its FIDO form) and ECDSA pass, RSA needs 3072 bits, DSA and short RSA are weak.
"""

from __future__ import annotations

import base64
import binascii
import struct
from pathlib import Path

STRONG_TYPES = {"ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com"}
MIN_RSA_BITS = 3072


def parse_sshd_T(text: str) -> dict[str, list[str]]:  # noqa: N802
    """`sshd -T` output -> {lowercase key: [values...]} (keys like hostkey repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def config_findings(conf: dict[str, list[str]]) -> list[str]:
    """Weak settings in the effective sshd configuration."""
    found = []

    def first(k: str) -> str:
        return (conf.get(k) or [""])[0].lower()

    if first("passwordauthentication") == "yes":
        found.append("PasswordAuthentication yes: password logins are allowed")
    if first("kbdinteractiveauthentication") == "yes" and first("usepam") == "yes":
        found.append("KbdInteractiveAuthentication yes with UsePAM: passwords can still be typed")
    if first("permitrootlogin") in ("yes",):
        found.append("PermitRootLogin yes: root can log in with a password")
    if first("permitemptypasswords") == "yes":
        found.append("PermitEmptyPasswords yes")
    return found


def key_strength(line: str) -> tuple[bool, str]:
    """One OpenSSH public key line (authorized_keys or .pub) -> (strong enough, description)."""
    parts = line.split()
    # authorized_keys lines may start with options; find the key type token.
    idx = next((i for i, p in enumerate(parts) if p.startswith(("ssh-", "ecdsa-", "sk-"))), None)
    if idx is None or idx + 1 >= len(parts):
        return False, "unparseable key"
    ktype, blob = parts[idx], parts[idx + 1]
    if ktype in STRONG_TYPES:
        return True, ktype
    if ktype == "ssh-rsa":
        bits = rsa_bits(blob)
        if bits is None:
            return False, "ssh-rsa (unparseable)"
        return bits >= MIN_RSA_BITS, f"ssh-rsa {bits} bits"
    return False, ktype


def rsa_bits(blob_b64: str) -> int | None:
    """Modulus size of an ssh-rsa public key blob (string type, mpint e, mpint n)."""
    try:
        blob = base64.b64decode(blob_b64, validate=True)
        fields, off = [], 0
        for _ in range(3):
            (n,) = struct.unpack_from(">I", blob, off)
            off += 4
            fields.append(blob[off:off + n])
            off += n
        if fields[0] != b"ssh-rsa":
            return None
        return int.from_bytes(fields[2], "big").bit_length()
    except (binascii.Error, ValueError, struct.error):
        return None


def key_findings(files: list[Path]) -> list[str]:
    found = []
    for f in files:
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            ok, desc = key_strength(line)
            if not ok:
                found.append(f"{f}:{n}: weak key ({desc}); use Ed25519 or RSA >= {MIN_RSA_BITS}")
    return found
