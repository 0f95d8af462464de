"""The native SPA profile (what `stockade knock` sends by default): ChaCha20-Poly1305 with a key id.

Wire format, version 1 (all integers big-endian, no variable-length text anywhere):

    offset  size  field
    0       1     version = 0x01 (never a base64 character, so it cannot be taken for fwknop)
    1       8     key id = HMAC-SHA256(native_key, "stockade-perimeter/v1/kid")[:8]
    9       12    nonce, random per packet
    21      n+16  ChaCha20-Poly1305(k, nonce, plaintext, aad = bytes 0..20)
                  with k = HMAC-SHA256(native_key, "stockade-perimeter/v1/aead")

    plaintext (n bytes, exact length, no trailing bytes):
    0       8     timestamp in milliseconds since the epoch (u64)
    8       2     requested grant seconds (u16, 0 = the server's default)
    10      1     address family: 4, 6, or 0 = "the packet's source" (refused unless opted in)
    11      0|4|16 address the grant is for (must equal the packet's source address)
    .       1     number of ports, 1..16
    .       3*k   (protocol u8: 6 tcp / 17 udp, port u16 != 0), no duplicates

The key id only selects the stanza (one dictionary lookup, no crypto for unknown ids); the
Poly1305 tag is verified before any plaintext is released, so unauthenticated bytes never reach
the parser. The whole datagram is authenticated (header as AAD), so nothing can be re-encoded or
spliced. Pure functions only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from stockade.perimeter.codec import PROTO_NAMES, PROTOS, Port, Reject, SpaRequest

VERSION = 1
HEADER = 21
TAG = 16
MAX_PORTS = 16
MIN_LEN = HEADER + 8 + 2 + 1 + 1 + 3 + TAG
MAX_LEN = HEADER + 8 + 2 + 1 + 16 + 1 + 3 * MAX_PORTS + TAG


@dataclass(frozen=True)
class NativeKey:
    """A derived key pair: the public-ish key id and the AEAD key."""

    kid: bytes
    aead: ChaCha20Poly1305

    @classmethod
    def from_secret(cls, secret: bytes) -> NativeKey:
        if len(secret) != 32:
            raise ValueError("native key must be 32 bytes")
        kid = hmac.new(secret, b"stockade-perimeter/v1/kid", hashlib.sha256).digest()[:8]
        k = hmac.new(secret, b"stockade-perimeter/v1/aead", hashlib.sha256).digest()
        return cls(kid, ChaCha20Poly1305(k))


def precheck(wire: bytes) -> bytes:
    """Length and version; returns the key id to look up."""
    if not MIN_LEN <= len(wire) <= MAX_LEN:
        raise Reject("bad_length")
    if wire[0] != VERSION:
        raise Reject("bad_version")
    return wire[1:9]


def open_packet(wire: bytes, key: NativeKey) -> bytes:
    """Verify the tag and return the plaintext."""
    try:
        return key.aead.decrypt(wire[9:21], wire[21:], wire[:21])
    except InvalidTag:
        raise Reject("bad_tag") from None


def parse_plaintext(pt: bytes, stanza: str = "") -> SpaRequest:
    if len(pt) < 15:
        raise Reject("bad_plaintext")
    ts_ms, timeout, fam = struct.unpack_from(">QHB", pt, 0)
    alen = {0: 0, 4: 4, 6: 16}.get(fam)
    if alen is None:
        raise Reject("bad_plaintext")
    off = 11
    if len(pt) < off + alen + 1:
        raise Reject("bad_plaintext")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if fam == 4:
        ip = ipaddress.IPv4Address(pt[off:off + 4])
    elif fam == 6:
        ip = ipaddress.IPv6Address(pt[off:off + 16])
    off += alen
    n = pt[off]
    off += 1
    if not 1 <= n <= MAX_PORTS or len(pt) != off + 3 * n:
        raise Reject("bad_plaintext")
    ports = []
    for i in range(n):
        proto, port = struct.unpack_from(">BH", pt, off + 3 * i)
        if proto not in PROTO_NAMES or port == 0:
            raise Reject("bad_plaintext")
        ports.append(Port(PROTO_NAMES[proto], port))
    if len(set(ports)) != n:
        raise Reject("bad_plaintext")
    if ip is not None and (ip.is_unspecified or ip.is_multicast):
        raise Reject("bad_plaintext")
    return SpaRequest("native", stanza, ip, tuple(ports), ts_ms / 1000.0, timeout)


def decode(wire: bytes, key: NativeKey, stanza: str = "") -> SpaRequest:
    """Full verification against one key (the daemon looks the key up by id first)."""
    if precheck(wire) != key.kid:
        raise Reject("unknown_key")
    return parse_plaintext(open_packet(wire, key), stanza)


def encode(key: NativeKey, allow_ip: str | None, ports: list[str], *, timestamp: float,
           client_timeout: int = 0, nonce: bytes | None = None) -> bytes:
    """Build a native packet. `allow_ip=None` sends family 0 ("use my source address")."""
    from stockade.perimeter.codec import parse_port

    pt = struct.pack(">QH", int(timestamp * 1000), client_timeout)
    if allow_ip is None:
        pt += b"\x00"
    else:
        ip = ipaddress.ip_address(allow_ip)
        pt += bytes([4 if ip.version == 4 else 6]) + ip.packed
    ps = [parse_port(p) for p in ports]
    pt += bytes([len(ps)]) + b"".join(struct.pack(">BH", PROTOS[p.proto], p.port) for p in ps)
    header = bytes([VERSION]) + key.kid + (nonce if nonce is not None else os.urandom(12))
    return header + key.aead.encrypt(header[9:21], pt, header)
