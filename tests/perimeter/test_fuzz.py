"""Hypothesis fuzzing of the parsers: nothing but Reject ever comes out of bad input, and no
mutation of a valid packet is ever accepted."""

from __future__ import annotations

import base64
import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.perimeter import fwknop, native, verify
from stockade.perimeter.codec import Reject
from stockade.perimeter.config import PerimeterConfig

K, H, N = os.urandom(32), os.urandom(64), os.urandom(32)

CFG = PerimeterConfig.model_validate({"stanzas": [{
    "name": "s", "key_base64": base64.b64encode(K).decode(), "hmac_key_base64": base64.b64encode(H).decode(),
    "native_key": base64.b64encode(N).decode()}]})
RING = verify.Keyring.from_config(CFG)
NK = native.NativeKey.from_secret(N)
FW_VALID = fwknop.encode(K, H, "192.0.2.1", ["tcp/22"], timestamp=1_800_000_000)
NATIVE_VALID = native.encode(NK, "192.0.2.1", ["tcp/22"], timestamp=1_800_000_000)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", min_size=0, max_size=1600)


def refused(wire: bytes) -> bool:
    try:
        verify.authenticate(wire, RING)
    except Reject:
        return True
    return False


@FUZZ
@given(st.binary(max_size=1600))
def test_random_bytes_are_refused(wire: bytes) -> None:
    assert refused(wire)


@FUZZ
@given(B64)
def test_random_base64_is_refused(text: str) -> None:
    assert refused(text.encode())


@FUZZ
@given(st.sampled_from([FW_VALID, NATIVE_VALID]), st.integers(0, 2000), st.binary(min_size=1, max_size=4),
       st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
def test_mutations_of_valid_packets_are_refused(valid: bytes, pos: int, data: bytes, how: str) -> None:
    i = pos % len(valid)
    if how == "replace":
        wire = valid[:i] + data + valid[i + len(data):]
    elif how == "insert":
        wire = valid[:i] + data + valid[i:]
    elif how == "delete":
        wire = valid[:i] + valid[i + len(data):]
    elif how == "truncate":
        wire = valid[:i]
    else:
        wire = valid + data
    if wire == valid:
        return
    assert refused(wire)


@FUZZ
@given(st.text(max_size=400))
def test_fwknop_plaintext_parser_only_rejects(text: str) -> None:
    with contextlib.suppress(Reject):
        fwknop.parse_plaintext(text)


@FUZZ
@given(st.lists(st.text(alphabet="0123456789:,./tcpudAZaz+=", max_size=30), min_size=1, max_size=10))
def test_fwknop_plaintext_fieldlike_only_rejects(fields: list[str]) -> None:
    with contextlib.suppress(Reject):
        fwknop.parse_plaintext("1234567890123456:" + ":".join(fields))


@FUZZ
@given(st.binary(max_size=200))
def test_native_plaintext_parser_only_rejects(pt: bytes) -> None:
    try:
        req = native.parse_plaintext(pt)
    except Reject:
        return
    assert 1 <= len(req.ports) <= native.MAX_PORTS


@FUZZ
@given(st.ip_addresses(v=4).filter(lambda a: not a.is_unspecified and not a.is_multicast),
       st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)), min_size=1, max_size=16,
                unique=True),
       st.integers(0, 2**40), st.integers(0, 65535))
def test_native_round_trip(ip, ports, ts_ms, timeout) -> None:  # type: ignore[no-untyped-def]
    specs = [f"{p}/{n}" for p, n in ports]
    req = verify.authenticate(native.encode(NK, str(ip), specs, timestamp=ts_ms / 1000, client_timeout=timeout),
                              RING)
    assert req.allow_ip == ip and [str(p) for p in req.ports] == specs and req.client_timeout == timeout
