"""Pure egress checks: URL/host parsing, allowlist decisions, DNS decoding (unit + property)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.egress import dns, ruleset
from stockade.egress.rules import (
    Allowlist,
    Forbidden,
    join_url,
    parse_entries,
    parse_entry,
    parse_ipv4,
    parse_url,
    split_answers,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def allow(items: list[str], resolved: dict[str, tuple[str, ...]] | None = None) -> Allowlist:
    entries, errors = parse_entries(items)
    assert not errors
    return Allowlist(tuple(entries), resolved or {})


def refused(fn, *a) -> StockadeError:  # type: ignore[no-untyped-def]
    with pytest.raises(StockadeError) as ei:
        fn(*a)
    return ei.value


# -- URLs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://user:pw@api.example.com/",            # userinfo
    "http://api.example.com@10.0.0.1/",           # userinfo hiding the real host
    "ftp://api.example.com/", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)",
    "data:text/plain,hi", "HTTP:/api.example.com/", "//api.example.com/", "api.example.com/x",
    "http://[::1]/", "http://[::ffff:127.0.0.1]:80/", "http://[fe80::1%25eth0]/",
    "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/", "http://0x7f000001/",
    "http://127.1/", "http://127.0.1/", "http://1.2.3.04/", "http://1.2.3.256/", "http://1.2.3/",
    "http://bücher.example/", "http://xn--bcher-kva.example/", "http://exa%6dple.com/",
    "http://api.example.com:0/", "http://api.example.com:65536/", "http://api.example.com:+80/",
    "http://api.example.com:8o/", "http://a b.com/", "http://api.example.com\\@evil/", "http:///x",
    "http://api.example.com\r\nHost: evil/", "http://-bad-.com/", "http://api..example.com/",
    "http://" + "a" * 64 + ".com/", "http://example.123/", "http://foo.0x1f/",
])
def test_bad_urls_refused(url: str) -> None:
    e = refused(parse_url, url)
    assert e.type in ("EgressDenied", "InvalidInput")


def test_good_url() -> None:
    u = parse_url("HTTPS://API.Example.COM:8443/v1/x?y=1#frag")
    assert (u.scheme, u.host, u.port, u.target) == ("https", "api.example.com", 8443, "/v1/x?y=1")
    assert parse_url("http://198.51.100.7").target == "/"
    assert parse_url("http://example.com./").host == "example.com"


@FAST
@given(st.text(max_size=200))
def test_parse_url_never_crashes(text: str) -> None:
    try:
        u = parse_url(text)
    except StockadeError as e:
        assert e.type in ("EgressDenied", "InvalidInput")
        return
    # anything accepted is an http(s) URL on an ASCII LDH host or canonical IPv4, no userinfo
    assert u.scheme in ("http", "https")
    assert "@" not in u.host and "[" not in u.host and u.host.isascii()
    assert 0 < u.port < 65536
    ip = parse_ipv4(u.host)
    assert ip is not None or not u.host.replace(".", "").isdigit()


@FAST
@given(st.integers(0, 2**32 - 1))
def test_numeric_ip_spellings_refused(n: int) -> None:
    ip = ipaddress.IPv4Address(n)
    b = ip.packed
    spellings = [str(n), hex(n), "0" + oct(n)[2:], ".".join(f"0{x:o}" for x in b),
                 ".".join(hex(x) for x in b), f"{b[0]}.{int.from_bytes(b[1:], 'big')}",
                 f"{b[0]}.{b[1]}.{int.from_bytes(b[2:], 'big')}"]
    for s in spellings:
        if s == str(ip):
            continue
        with pytest.raises(StockadeError):
            parse_url(f"http://{s}/")


@FAST
@given(st.integers(0, 2**32 - 1))
def test_canonical_ipv4_roundtrip(n: int) -> None:
    ip = ipaddress.IPv4Address(n)
    assert parse_ipv4(str(ip)) == ip
    assert parse_url(f"http://{ip}:81/").host == str(ip)


# -- allowlist ------------------------------------------------------------------------------------
def test_entries() -> None:
    assert parse_entry("api.example.com:443").host == "api.example.com"
    assert str(parse_entry("10.0.0.0/8:22").net) == "10.0.0.0/8"
    assert str(parse_entry("198.51.100.7:80").net) == "198.51.100.7/32"
    for bad in ["api.example.com", "api.example.com:0", "10.0.0.1/8:22", "[::1]:80", "::1:80", "*.x.com:443",
                "x.com:99999", "bücher.de:443", "0177.0.0.1:80", 42, "10.0.0.0/33:1", "10.0.0.0/08:1"]:
        with pytest.raises(ValueError):
            parse_entry(bad)


def test_targets_hostname_uses_only_resolved_addresses() -> None:
    a = allow(["api.example.com:443"], {"api.example.com": ("198.51.100.7",)})
    assert [str(x) for x in a.targets("api.example.com", 443)] == ["198.51.100.7"]
    assert refused(a.targets, "api.example.com", 80).type == "EgressDenied"      # port not listed
    assert refused(a.targets, "other.example.com", 443).type == "EgressDenied"   # host not listed
    # by literal IP, a resolved address of a listed name is what nftables allows too
    assert [str(x) for x in a.targets("198.51.100.7", 443)] == ["198.51.100.7"]
    assert refused(a.targets, "198.51.100.8", 443).type == "EgressDenied"


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.2"])
def test_forbidden_ranges_refused_for_hostnames(ip: str) -> None:
    ents, _ = parse_entries(["api.example.com:443"])
    ok, bad = split_answers(Forbidden(), ents, "api.example.com", [ip, "198.51.100.7"])
    assert ok == ("198.51.100.7",) and bad == (ip,)
    a = Allowlist(tuple(ents), {"api.example.com": (ip,)})   # even if a stale view said so
    assert refused(a.targets, "api.example.com", 443).type == "EgressDenied"
    assert refused(a.targets, ip, 443).type == "EgressDenied"
    assert (f"{ip}/32", 443) not in a.nft_elements()


def test_explicit_cidr_unlocks_private() -> None:
    a = allow(["10.20.0.0/16:5432"])
    assert [str(x) for x in a.targets("10.20.1.2", 5432)] == ["10.20.1.2"]
    assert refused(a.targets, "10.20.1.2", 5433).type == "EgressDenied"
    assert refused(a.targets, "10.21.1.2", 5432).type == "EgressDenied"
    assert a.nft_elements() == [("10.20.0.0/16", 5432)]


def test_host_addresses_and_lan_forbidden() -> None:
    fb = Forbidden().with_host(["203.0.113.9"], ["198.51.100.0/24"])
    assert fb.reason(ipaddress.IPv4Address("203.0.113.9"))
    assert fb.reason(ipaddress.IPv4Address("198.51.100.77"))
    assert not fb.reason(ipaddress.IPv4Address("203.0.113.10"))


ips = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


@FAST
@given(st.lists(ips, max_size=6), ips, st.integers(1, 65535))
def test_addr_allowed_matches_nft_elements(answers: list[str], probe: str, port: int) -> None:
    """The handler's check and the nftables set agree: same decision for any address."""
    ents, _ = parse_entries(["h.example:443", "198.51.100.0/28:8080"])
    ok, _bad = split_answers(Forbidden(), ents, "h.example", answers)
    a = Allowlist(tuple(ents), {"h.example": ok})
    ip = ipaddress.IPv4Address(probe)
    in_set = any(ip in ipaddress.IPv4Network(c) and p == port for c, p in a.nft_elements())
    assert a.addr_allowed(ip, port) == in_set
    if Forbidden().reason(ip) and not (ip in ipaddress.IPv4Network("198.51.100.0/28") and port == 8080):
        assert not in_set


# -- redirects ------------------------------------------------------------------------------------
def test_join_url() -> None:
    base = parse_url("https://api.example.com/v1/items?x=1")
    assert str(join_url(base, "/v2")) == "https://api.example.com/v2"
    assert str(join_url(base, "other")) == "https://api.example.com/v1/other"
    assert str(join_url(base, "//cdn.example.com/a")) == "https://cdn.example.com/a"
    assert str(join_url(base, "http://198.51.100.7:8080/z")) == "http://198.51.100.7:8080/z"
    for bad in ["file:///etc/passwd", "http://user@x.com/", "http://[::1]/", "http://0x7f000001/", "gopher://x/"]:
        with pytest.raises(StockadeError):
            join_url(base, bad)


@FAST
@given(st.text(max_size=100))
def test_join_url_never_crashes(loc: str) -> None:
    base = parse_url("http://api.example.com/a/b")
    try:
        u = join_url(base, loc)
    except StockadeError:
        return
    assert u.scheme in ("http", "https")


# -- DNS ------------------------------------------------------------------------------------------
def test_dns_roundtrip() -> None:
    q = dns.build_query(0x1234, "api.example.com")
    r = dns.build_response(q, ["198.51.100.7", "203.0.113.5"], ttl=42)
    ans = dns.parse_response(r, 0x1234, "api.example.com")
    assert ans.addresses == ("198.51.100.7", "203.0.113.5") and ans.ttl == 42
    with pytest.raises(dns.DnsError):
        dns.parse_response(r, 0x1235, "api.example.com")
    with pytest.raises(dns.DnsError):
        dns.parse_response(r, 0x1234, "other.example.com")


def test_dns_pointer_loop_refused() -> None:
    q = dns.build_query(1, "a.b")
    # answer whose name is a pointer to itself
    bad = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + q[12:] + b"\xc0" + bytes([len(q)]) + \
        struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton("1.2.3.4")
    with pytest.raises(dns.DnsError):
        dns.parse_response(bad, 1, "a.b")


@FAST
@given(st.binary(max_size=300))
def test_dns_parser_fuzz(data: bytes) -> None:
    with contextlib.suppress(dns.DnsError):
        dns.parse_response(data, int.from_bytes(data[:2] or b"\0\0", "big"), "a.example")


@FAST
@given(st.lists(ips, min_size=0, max_size=5), st.binary(min_size=0, max_size=40))
def test_dns_mutated_response(addrs: list[str], noise: bytes) -> None:
    q = dns.build_query(7, "x.example")
    r = bytearray(dns.build_response(q, addrs))
    for i, b in enumerate(noise):
        assume(len(r) > 0)
        r[(i * 7919) % len(r)] ^= b
    try:
        ans = dns.parse_response(bytes(r), 7, "x.example")
        for a in ans.addresses:
            assert parse_ipv4(a) is not None
    except dns.DnsError:
        pass


# -- ruleset shape --------------------------------------------------------------------------------
def test_ns_ruleset_default_deny() -> None:
    cmds = ruleset.ns_ruleset([], None)
    chains = [c["add"]["chain"] for c in cmds if "add" in c and "chain" in c["add"]]
    assert {c["name"]: c["policy"] for c in chains} == {"output": "drop", "input": "drop"}
    assert not any("53" in str(c) for c in cmds)


# -- handlers: whatever the input, a connection is only ever attempted to an allowed address ----------
class _Sentinel:
    """Stands in for socket.socket in the handler module: records connect targets, never connects."""

    seen: list[tuple[str, int]] = []

    def __init__(self, *a: object, **k: object) -> None:
        pass

    def settimeout(self, t: float) -> None:
        pass

    def connect(self, addr: tuple[str, int]) -> None:
        _Sentinel.seen.append(addr)
        raise ConnectionRefusedError(111, "refused")

    def close(self) -> None:
        pass


url_parts = st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, h, p, path: f"{s}://{h}{p}{path}",
              st.sampled_from(["http", "https", "ftp", "HTTP", "file", "gopher"]),
              st.sampled_from(["198.51.100.10", "api.ok.test", "api.bad.test", "10.0.0.1", "169.254.169.254",
                               "127.0.0.1", "2130706433", "0x7f.1", "[::1]", "u:p@198.51.100.10", "localhost",
                               "198.51.100.010", "api.ok.test.", "API.OK.TEST", "xn--bcher-kva.test"]),
              st.sampled_from(["", ":8080", ":8081", ":80", ":443", ":0", ":65536", ":08080"]),
              st.sampled_from(["", "/", "/x?y=1", "#f", "/@evil"])),
)


@FAST
@given(url_parts)
def test_http_request_connects_only_to_allowed_addresses(url: str) -> None:
    from stockade.capabilities.impl import network

    view = {"entries": ["198.51.100.10:8080", "api.ok.test:443"], "resolved": {"api.ok.test": ["203.0.113.7"]}}
    _Sentinel.seen = []
    orig = network.socket.socket
    network.socket.socket = _Sentinel  # type: ignore[misc,assignment]
    try:
        network.http_request({"agent": "a", "extra": {"egress": view}}, {"url": url, "timeout": 1})
        raise AssertionError("a refused connect must not produce a result")
    except StockadeError as e:
        assert e.type in ("EgressDenied", "InvalidInput", "NetworkError", "Timeout")
    finally:
        network.socket.socket = orig  # type: ignore[misc]
    assert set(_Sentinel.seen) <= {("198.51.100.10", 8080), ("203.0.113.7", 443)}
