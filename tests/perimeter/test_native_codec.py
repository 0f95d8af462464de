"""The native profile: round trips, tampering, wrong keys, malformed plaintexts."""

from __future__ import annotations

import ipaddress
import os

import pytest

from stockade.perimeter import native
from stockade.perimeter.codec import Port, Reject


@pytest.fixture
def key() -> native.NativeKey:
    return native.NativeKey.from_secret(os.urandom(32))


def test_round_trip_v4_v6_and_source(key: native.NativeKey) -> None:
    w = native.encode(key, "192.0.2.5", ["tcp/22", "udp/51820"], timestamp=1_800_000_000.123, client_timeout=60)
    r = native.decode(w, key, "s")
    assert r.allow_ip == ipaddress.IPv4Address("192.0.2.5") and r.client_timeout == 60
    assert r.ports == (Port("tcp", 22), Port("udp", 51820)) and abs(r.timestamp - 1_800_000_000.123) < 1e-3
    assert native.decode(native.encode(key, "2001:db8::1", ["tcp/22"], timestamp=1), key).allow_ip == \
        ipaddress.IPv6Address("2001:db8::1")
    assert native.decode(native.encode(key, None, ["tcp/22"], timestamp=1), key).allow_ip is None
    assert native.MIN_LEN <= len(w) <= native.MAX_LEN


def test_each_bit_of_the_packet_is_authenticated(key: native.NativeKey) -> None:
    w = native.encode(key, "192.0.2.5", ["tcp/22"], timestamp=1)
    for i in range(len(w)):
        for bit in (0x01, 0x80):
            bad = bytearray(w)
            bad[i] ^= bit
            with pytest.raises(Reject):
                native.decode(bytes(bad), key)


def test_wrong_key_truncation_extension(key: native.NativeKey) -> None:
    w = native.encode(key, "192.0.2.5", ["tcp/22"], timestamp=1)
    other = native.NativeKey.from_secret(os.urandom(32))
    with pytest.raises(Reject, match="unknown_key"):
        native.decode(w, other)
    forged = w[:1] + other.kid + w[9:]   # right id, wrong key: the tag fails
    with pytest.raises(Reject, match="bad_tag"):
        native.decode(forged, other)
    for bad in (w[:-1], w + b"\x00", w[:native.MIN_LEN - 1], b"\x02" + w[1:]):
        with pytest.raises(Reject):
            native.decode(bad, key)


@pytest.mark.parametrize("pt", [
    b"", b"\x00" * 10,
    bytes(8) + bytes(2) + b"\x05" + b"\x01" + b"\x06\x00\x16",            # family 5
    bytes(8) + bytes(2) + b"\x04" + bytes(4) + b"\x01" + b"\x06\x00\x16",  # 0.0.0.0 as explicit v4
    bytes(8) + bytes(2) + b"\x00" + b"\x00",                               # no ports
    bytes(8) + bytes(2) + b"\x00" + b"\x01" + b"\x01\x00\x16",             # protocol 1
    bytes(8) + bytes(2) + b"\x00" + b"\x01" + b"\x06\x00\x00",             # port 0
    bytes(8) + bytes(2) + b"\x00" + b"\x02" + b"\x06\x00\x16" * 2,         # duplicate
    bytes(8) + bytes(2) + b"\x00" + b"\x01" + b"\x06\x00\x16" + b"\x00",   # trailing byte
    bytes(8) + bytes(2) + b"\x00" + b"\x11" + b"\x06\x00\x16" * 17,        # too many ports
])
def test_malformed_plaintexts_refused(key: native.NativeKey, pt: bytes) -> None:
    with pytest.raises(Reject):
        native.parse_plaintext(pt)
    # Sealed with the right key they are still refused (authentic but malformed).
    header = bytes([1]) + key.kid + os.urandom(12)
    with pytest.raises(Reject):
        native.decode(header + key.aead.encrypt(header[9:21], pt, header), key)
