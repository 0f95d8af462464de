"""Minimal DNS A-record client: a pure encoder/decoder and a thin UDP/TCP shell.

Why our own: hostnames in the allowlist are resolved against the *configured* resolver (not
whatever the host's libc uses), both by the gateway at policy load and by `network.dns_lookup`
inside the sandbox, where there is no /etc/resolv.conf. The decoder is fuzzed; it raises
DnsError for anything malformed and never loops (compression pointers must point backwards).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

TYPE_A = 1
TYPE_CNAME = 5
CLASS_IN = 1


class DnsError(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]
    ttl: int                  # min TTL of the A records (0 when none)
    rcode: int


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def build_query(qid: int, name: str, qtype: int = TYPE_A) -> bytes:
    header = struct.pack("!HHHHHH", qid & 0xFFFF, 0x0100, 1, 0, 0, 0)  # RD
    return header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if off >= len(msg):
            raise DnsError("truncated name")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("truncated pointer")
            ptr = ((n & 0x3F) << 8) | msg[off + 1]
            if ptr >= off:
                raise DnsError("forward compression pointer")
            jumps += 1
            if jumps > 64:
                raise DnsError("pointer loop")
            if end is None:
                end = off + 2
            off = ptr
            continue
        if n & 0xC0:
            raise DnsError("bad label type")
        off += 1
        if n == 0:
            break
        if off + n > len(msg):
            raise DnsError("truncated label")
        labels.append(msg[off:off + n].decode("ascii", errors="replace").lower())
        off += n
        if sum(len(x) + 1 for x in labels) > 255:
            raise DnsError("name too long")
    return ".".join(labels), (end if end is not None else off)


def parse_response(msg: bytes, qid: int, name: str) -> Answer:
    """Pure: response bytes -> A addresses for `name` (following CNAMEs within the answer)."""
    if len(msg) < 12:
        raise DnsError("short response")
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid & 0xFFFF:
        raise DnsError("response id mismatch")
    if not flags & 0x8000:
        raise DnsError("not a response")
    if flags & 0x0200:
        raise DnsError("truncated (TC)")
    rcode = flags & 0x000F
    off = 12
    for _ in range(qd):
        qname, off = _read_name(msg, off)
        off += 4
        if off > len(msg):
            raise DnsError("truncated question")
        if qname != name.rstrip(".").lower():
            raise DnsError("question does not match")
    wanted = {name.rstrip(".").lower()}
    addrs: list[str] = []
    ttls: list[int] = []
    records = []
    for _ in range(an):
        rname, off = _read_name(msg, off)
        if off + 10 > len(msg):
            raise DnsError("truncated record")
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if off + rdlen > len(msg):
            raise DnsError("truncated rdata")
        records.append((rname, rtype, rclass, ttl, off, rdlen))
        off += rdlen
    # CNAME chains: records may come in any order; iterate to a fixpoint (bounded).
    for _ in range(8):
        grew = False
        for rname, rtype, rclass, _ttl, roff, _rdlen in records:
            if rtype == TYPE_CNAME and rclass == CLASS_IN and rname in wanted:
                target, _ = _read_name(msg, roff)
                if target not in wanted:
                    wanted.add(target)
                    grew = True
        if not grew:
            break
    for rname, rtype, rclass, ttl, roff, rdlen in records:
        if rtype == TYPE_A and rclass == CLASS_IN and rname in wanted:
            if rdlen != 4:
                raise DnsError("bad A record length")
            addrs.append(socket.inet_ntoa(msg[roff:roff + 4]))
            ttls.append(ttl)
    return Answer(tuple(addrs), min(ttls) if ttls else 0, rcode)


def query(resolver: str, name: str, *, timeout: float = 3.0, port: int = 53) -> Answer:
    """Ask `resolver` for the A records of `name` over UDP (TCP when truncated)."""
    qid = int.from_bytes(os.urandom(2), "big")
    q = build_query(qid, name)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((resolver, port))   # connected UDP: replies from anyone else are dropped
        s.send(q)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DnsError(f"no answer from {resolver} within {timeout:g}s")
            s.settimeout(left)
            try:
                data = s.recv(4096)
            except TimeoutError:
                raise DnsError(f"no answer from {resolver} within {timeout:g}s") from None
            except OSError as e:
                raise DnsError(f"resolver {resolver}: {e.strerror or e}") from None
            try:
                return parse_response(data, qid, name)
            except DnsError as e:
                if "truncated (TC)" in str(e):
                    break
                if "id mismatch" in str(e):
                    continue
                raise
    return _query_tcp(resolver, name, q, qid, max(0.1, deadline - time.monotonic()), port)


def _query_tcp(resolver: str, name: str, q: bytes, qid: int, timeout: float, port: int) -> Answer:
    with socket.create_connection((resolver, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(q)) + q)
        head = _recv_exact(s, 2)
        (n,) = struct.unpack("!H", head)
        return parse_response(_recv_exact(s, n), qid, name)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise DnsError("resolver closed the connection")
        buf += chunk
    return buf


def build_response(query_msg: bytes, addresses: list[str], ttl: int = 60) -> bytes:
    """For test resolvers: answer `query_msg` with A records (pure)."""
    qid, _flags, _qd = struct.unpack("!HHH", query_msg[:6])
    _, off = _read_name(query_msg, 12)
    question = query_msg[12:off + 4]
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, len(addresses), 0, 0)
    body = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(a)
                    for a in addresses)
    return header + question + body
