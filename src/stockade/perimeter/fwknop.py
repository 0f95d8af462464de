"""The fwknop-compatible SPA profile: fwknop 2.x Rijndael (AES-256-CBC) + HMAC-SHA256.

Wire format (docs/perimeter.md, "Packet formats"), as produced by Debian's `fwknop --use-hmac`:
    B64(Salted__ || salt8 || AES-256-CBC(plaintext)) with `=` stripped and the constant first 10
    characters `U2FsdGVkX1` removed, immediately followed by the 43-character B64 HMAC-SHA256 over
    the prefix-restored ciphertext string.
Plaintext: `rand16:b64(user):ts:version:type:b64(message)[:client_timeout]:b64(digest)`.

Checks run cheapest first, and nothing unauthenticated reaches the CBC code: length, charset,
prefix splice, HMAC (constant time), then decryption, padding, the random field, the inner digest
and the fields. Only access messages (type 1, or 3 with a client timeout) are accepted; command,
NAT and server-auth messages are refused. Pure functions only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stockade.perimeter.codec import Port, Reject, SpaRequest, parse_port

PREFIX = "U2FsdGVkX1"          # base64 of b"Salted__" (first 10 characters)
GPG_PREFIX = "hQ"
MIN_LEN, MAX_LEN = 140, 1500   # fwknopd MIN_SPA_DATA_SIZE / MAX_SPA_PACKET_LEN
HMAC_LEN = 43                  # base64 (unpadded) of a 32-byte HMAC-SHA256 tag
VERSION = "3.0.0"
_B64 = re.compile(rb"[A-Za-z0-9+/]+")
_RAND = re.compile(r"[0-9]{16}")
_INT = re.compile(r"[0-9]{1,10}")
# Inner digest types by base64 length: never weaker than SHA-256 (MD5=22, SHA-1=27 are refused).
_DIGESTS = {43: ("sha256", "sha3_256"), 64: ("sha384",), 86: ("sha512", "sha3_512")}
MAX_USER, MAX_MESSAGE = 64, 256


def b64e(data: bytes) -> str:
    """fwknop's base64: standard alphabet, `=` stripped."""
    return base64.b64encode(data).decode().rstrip("=")


def b64d(text: str) -> bytes:
    """Inverse of b64e (re-pads); raises Reject on anything that is not such base64."""
    if len(text) % 4 == 1 or not _B64.fullmatch(text.encode()) and text:
        raise Reject("bad_base64")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, TypeError):
        raise Reject("bad_base64") from None


def evp_bytes_to_key(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """OpenSSL EVP_BytesToKey(MD5, 1 round): 32-byte AES key and 16-byte IV (fwknop's KDF)."""
    out, d = b"", b""
    while len(out) < 48:
        d = hashlib.md5(d + key + salt, usedforsecurity=False).digest()
        out += d
    return out[:32], out[32:48]


def precheck(wire: bytes) -> str:
    """The cheap checks shared by every stanza: length, charset, prefix splice."""
    if not MIN_LEN <= len(wire) <= MAX_LEN:
        raise Reject("bad_length")
    if not _B64.fullmatch(wire):
        raise Reject("bad_charset")
    s = wire.decode("ascii")
    if s.startswith(PREFIX) or s.startswith(GPG_PREFIX):
        raise Reject("prefix_splice")
    return s


def hmac_tag(body: str, hmac_key: bytes) -> str:
    return b64e(hmac.new(hmac_key, (PREFIX + body).encode(), hashlib.sha256).digest())


def check_hmac(s: str, hmac_key: bytes) -> str:
    """Constant-time HMAC check; returns the ciphertext part (prefix-stripped base64)."""
    body, tag = s[:-HMAC_LEN], s[-HMAC_LEN:]
    if not hmac.compare_digest(hmac_tag(body, hmac_key).encode(), tag.encode()):
        raise Reject("bad_hmac")
    return body


def decrypt(body: str, key: bytes) -> str:
    """Decrypt an authenticated ciphertext (only ever called after check_hmac)."""
    raw = b64d(PREFIX + body)
    if len(raw) < 32 or raw[:8] != b"Salted__" or (len(raw) - 16) % 16:
        raise Reject("bad_ciphertext")
    aes_key, iv = evp_bytes_to_key(key, raw[8:16])
    dec = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    pt = dec.update(raw[16:]) + dec.finalize()
    pad = pt[-1]
    if not 1 <= pad <= 16 or pt[-pad:] != bytes([pad]) * pad:
        raise Reject("bad_padding")
    pt = pt[:-pad]
    try:
        text = pt.decode("ascii")
    except UnicodeDecodeError:
        raise Reject("bad_plaintext") from None
    if not text.isprintable():
        raise Reject("bad_plaintext")
    return text


def _digest_ok(signed: str, digest: str) -> bool:
    algs = _DIGESTS.get(len(digest))
    if not algs:
        raise Reject("weak_or_bad_digest")
    return any(hmac.compare_digest(b64e(hashlib.new(a, signed.encode()).digest()).encode(), digest.encode())
               for a in algs)


def parse_access(message: str) -> tuple[ipaddress.IPv4Address | None, tuple[Port, ...]]:
    """`IP,proto/port[,proto/port...]` -> (ip or None for 0.0.0.0, ports)."""
    parts = message.split(",")
    if len(parts) < 2:
        raise Reject("bad_message")
    try:
        ip = ipaddress.IPv4Address(parts[0])
        ports = tuple(parse_port(p) for p in parts[1:])
    except ValueError:
        raise Reject("bad_message") from None
    if len(set(ports)) != len(ports):
        raise Reject("bad_message")
    return (None if ip == ipaddress.IPv4Address("0.0.0.0") else ip), ports  # noqa: S104


def parse_plaintext(text: str, stanza: str = "") -> SpaRequest:
    """Check the random field and inner digest, then parse an access message."""
    if len(text) < 17 or not _RAND.fullmatch(text[:16]) or text[16] != ":":
        raise Reject("bad_plaintext")
    signed, _, digest = text.rpartition(":")
    if not _digest_ok(signed, digest):
        raise Reject("bad_digest")
    f = signed.split(":")
    if len(f) < 6:
        raise Reject("bad_fields")
    mtype = f[4]
    if mtype == "0":
        raise Reject("command_message")
    if mtype in ("2", "4", "5", "6"):
        raise Reject("nat_message")
    if mtype not in ("1", "3") or len(f) != (6 if mtype == "1" else 7):
        raise Reject("bad_fields")
    if f[3] != VERSION:
        raise Reject("bad_version")
    if not _INT.fullmatch(f[2]):
        raise Reject("bad_timestamp")
    user_b, msg_b = b64d(f[1]), b64d(f[5])
    if len(user_b) > MAX_USER or len(msg_b) > MAX_MESSAGE:
        raise Reject("bad_fields")
    try:
        user, message = user_b.decode("ascii"), msg_b.decode("ascii")
    except UnicodeDecodeError:
        raise Reject("bad_fields") from None
    timeout = 0
    if mtype == "3":
        if not _INT.fullmatch(f[6]) or not 0 < int(f[6]) <= 86400:
            raise Reject("bad_timeout")
        timeout = int(f[6])
    ip, ports = parse_access(message)
    return SpaRequest("fwknop", stanza, ip, ports, float(int(f[2])), timeout, user)


def decode(wire: bytes, key: bytes, hmac_key: bytes, stanza: str = "") -> SpaRequest:
    """Full verification of one packet against one stanza's keys."""
    s = precheck(wire)
    body = check_hmac(s, hmac_key)
    return parse_plaintext(decrypt(body, key), stanza)


def encode(key: bytes, hmac_key: bytes, allow_ip: str, ports: list[str], *, timestamp: int,
           user: str = "stockade", client_timeout: int = 0, salt: bytes | None = None,
           rand: str | None = None, message_type: int | None = None) -> bytes:
    """Build a packet the way fwknop 2.6 does (used by `stockade knock --fwknop` and tests)."""
    rand = rand if rand is not None else str(int.from_bytes(os.urandom(8), "big") % 10**16).zfill(16)
    mtype = message_type if message_type is not None else (3 if client_timeout else 1)
    msg = ",".join([allow_ip, *ports])
    fields = [rand, b64e(user.encode()), str(timestamp), VERSION, str(mtype), b64e(msg.encode())]
    if mtype in (3, 4, 6):
        fields.append(str(client_timeout))
    signed = ":".join(fields)
    pt = (signed + ":" + b64e(hashlib.sha256(signed.encode()).digest())).encode()
    salt = salt if salt is not None else os.urandom(8)
    aes_key, iv = evp_bytes_to_key(key, salt)
    pad = 16 - len(pt) % 16
    enc = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ct = enc.update(pt + bytes([pad]) * pad) + enc.finalize()
    body = b64e(b"Salted__" + salt + ct)[len(PREFIX):]
    return (body + hmac_tag(body, hmac_key)).encode()
