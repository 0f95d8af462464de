"""The fwknop-compatible codec against packets made at run time by Debian's real `fwknop` client."""

from __future__ import annotations

import base64
import ipaddress
import time
from pathlib import Path

import pytest
from tests.conftest import need
from tests.perimeter.conftest import fwknop_packet, keys

from stockade.perimeter import fwknop
from stockade.perimeter.codec import Port, Reject


@pytest.fixture(scope="module")
def k() -> dict[str, str]:
    return keys()


@pytest.fixture(scope="module")
def raw(k: dict[str, str]) -> tuple[bytes, bytes]:
    return base64.b64decode(k["key_base64"]), base64.b64decode(k["hmac_key_base64"])


@pytest.fixture(scope="module")
def vector(tmp_path_factory: pytest.TempPathFactory, k: dict[str, str]) -> bytes:
    return fwknop_packet(tmp_path_factory.mktemp("fw"), k, "-A", "tcp/22", "-a", "198.51.100.7")


def decode(wire: bytes, raw: tuple[bytes, bytes]):  # type: ignore[no-untyped-def]
    return fwknop.decode(wire, *raw, stanza="s")


def test_real_client_access_packet(vector: bytes, raw: tuple[bytes, bytes]) -> None:
    req = decode(vector, raw)
    assert req.profile == "fwknop" and req.stanza == "s"
    assert req.allow_ip == ipaddress.IPv4Address("198.51.100.7")
    assert req.ports == (Port("tcp", 22),)
    assert abs(req.timestamp - time.time()) < 60
    assert req.client_timeout == 0
    assert not vector.startswith(fwknop.PREFIX.encode())


def test_real_client_variants(tmp_path: Path, k: dict[str, str], raw: tuple[bytes, bytes]) -> None:
    req = decode(fwknop_packet(tmp_path, k, "-A", "tcp/22,udp/53", "-a", "10.1.2.3", "-f", "45"), raw)
    assert req.ports == (Port("tcp", 22), Port("udp", 53)) and req.client_timeout == 45
    for digest in ("sha384", "sha512"):   # stronger inner digests are fine
        assert decode(fwknop_packet(tmp_path, k, "-A", "tcp/22", "-a", "10.1.2.3", "-m", digest), raw).ports
    req = decode(fwknop_packet(tmp_path, k, "-A", "tcp/22", "-s"), raw)
    assert req.allow_ip is None          # 0.0.0.0: policy (verify.authorize) decides


@pytest.mark.parametrize(("args", "reason"), [
    (("-A", "tcp/22", "-a", "10.1.2.3", "-m", "md5"), "weak_or_bad_digest"),
    (("-A", "tcp/22", "-a", "10.1.2.3", "-m", "sha1"), "weak_or_bad_digest"),
    (("-C", "id", "-a", "10.1.2.3"), "command_message"),
    (("-A", "tcp/22", "-a", "10.1.2.3", "-N", "10.9.9.9:22"), "nat_message"),
    (("-A", "tcp/22", "-a", "10.1.2.3", "--hmac-digest-type", "sha512"), "bad_hmac"),
])
def test_real_client_refused(tmp_path: Path, k: dict[str, str], raw: tuple[bytes, bytes], args: tuple[str, ...],
                             reason: str) -> None:
    with pytest.raises(Reject) as e:
        decode(fwknop_packet(tmp_path, k, *args), raw)
    assert e.value.reason == reason


@pytest.mark.parametrize("mode", ["cfb", "ofb", "ctr", "ecb"])
def test_non_cbc_modes_refused(tmp_path: Path, k: dict[str, str], raw: tuple[bytes, bytes], mode: str) -> None:
    with pytest.raises(Reject):
        decode(fwknop_packet(tmp_path, k, "-A", "tcp/22", "-a", "10.1.2.3", "-M", mode), raw)


def test_legacy_iv_and_hmacless_packets_refused(tmp_path: Path, k: dict[str, str], raw: tuple[bytes, bytes]) -> None:
    import os
    import shutil
    import subprocess

    need(shutil.which("fwknop") is not None, "Debian fwknop-client is not installed")
    for extra in (("-M", "legacy"), ()):
        out = tmp_path / f"nohmac{len(extra)}"
        p = subprocess.run(["fwknop", "--no-rc-file", "--no-save-args", "--key-base64-rijndael", k["key_base64"],
                            "-A", "tcp/22", "-a", "10.1.2.3", "-D", "127.0.0.1", "-T", "-B", str(out), *extra],
                           capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
        assert p.returncode == 0, p.stderr
        with pytest.raises(Reject) as e:
            decode(out.read_bytes().strip(), raw)
        assert e.value.reason in ("bad_hmac", "bad_length")


def test_wrong_keys(vector: bytes, raw: tuple[bytes, bytes]) -> None:
    with pytest.raises(Reject, match="bad_hmac"):
        fwknop.decode(vector, raw[0], b"x" * 64)
    with pytest.raises(Reject):   # right HMAC key, wrong encryption key: never parses
        fwknop.decode(vector, b"y" * 32, raw[1])


def test_every_single_character_change_is_refused(vector: bytes, raw: tuple[bytes, bytes]) -> None:
    for i in range(len(vector)):
        for c in (b"A", b"/"):
            if vector[i:i + 1] == c:
                continue
            with pytest.raises(Reject):
                decode(vector[:i] + c + vector[i + 1:], raw)


def test_splices_truncations_and_reencodings(vector: bytes, raw: tuple[bytes, bytes]) -> None:
    for bad, reason in [
        (fwknop.PREFIX.encode() + vector, "prefix_splice"),
        (b"hQ" + vector, "prefix_splice"),
        (vector + b"=", "bad_charset"),
        (vector + b"\n", "bad_charset"),
        (vector[:100], "bad_length"),
        (vector * 8, "bad_length"),
        (vector[:-1], "bad_hmac"),
        (vector[1:], "bad_hmac"),
        (b"A" + vector, "bad_hmac"),
    ]:
        with pytest.raises(Reject) as e:
            decode(bad, raw)
        assert e.value.reason == reason, (bad[:20], e.value.reason)


def test_our_encoder_matches_the_format(raw: tuple[bytes, bytes]) -> None:
    wire = fwknop.encode(*raw, "203.0.113.9", ["tcp/22", "udp/60001"], timestamp=1_800_000_000, client_timeout=20)
    req = decode(wire, raw)
    assert req.allow_ip == ipaddress.IPv4Address("203.0.113.9")
    assert req.ports == (Port("tcp", 22), Port("udp", 60001))
    assert (req.timestamp, req.client_timeout) == (1_800_000_000, 20)
    # The message types we refuse, built by our encoder, are refused by our decoder.
    for mtype, reason in ((0, "command_message"), (2, "nat_message"), (5, "nat_message"), (9, "bad_fields")):
        w = fwknop.encode(*raw, "203.0.113.9", ["tcp/22"], timestamp=1, message_type=mtype)
        with pytest.raises(Reject) as e:
            decode(w, raw)
        assert e.value.reason == reason


def test_evp_bytes_to_key_matches_openssl(tmp_path: Path) -> None:
    """Cross-check the KDF with OpenSSL's own `enc -md md5` (what fwknop reproduces)."""
    import shutil
    import subprocess

    need(shutil.which("openssl") is not None, "openssl CLI not installed")
    salt = bytes.fromhex("0102030405060708")
    p = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-md", "md5", "-pass", "pass:secretkey", "-S",
                        salt.hex(), "-P"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    vals = {a.strip(): b.strip() for a, _, b in (ln.partition("=") for ln in p.stdout.splitlines()) if b}
    key, iv = fwknop.evp_bytes_to_key(b"secretkey", salt)
    assert key.hex().upper() == vals["key"].upper() and iv.hex().upper() == vals["iv"].upper()
