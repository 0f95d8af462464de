"""Per-call check, in the kernel, that an agent's egress rules are loaded (fail closed).

The egress part loads `inet stockade_egress` into each agent's network namespace; its `output`
chain has policy drop. If that table vanished underneath the gateway (and the host table with
it), a namespace with a veth and a default route would reach anything. So every sandboxed call,
right after it joins the agent's namespace and while it still holds CAP_NET_ADMIN there, asks
the kernel (one nfnetlink GETCHAIN, tens of microseconds) whether that chain exists with
policy drop. A namespace with no interface but `lo` has no way out and needs no rules.

Message encoding and decoding are pure functions; `check_output_guard` is the thin shell.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWCHAIN = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFPROTO_INET = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_POLICY = 5
NF_DROP = 0

TABLE = "stockade_egress"      # stockade.egress.ruleset.NS_TABLE (the egress part sits below us)
CHAIN = "output"


class RulesMissing(OSError):
    """The agent's namespace can reach out but its egress rules are not (fully) loaded."""


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def encode_getchain(table: str, chain: str, seq: int = 1) -> bytes:
    """Pure: an NFT_MSG_GETCHAIN request for `inet table chain`."""
    body = struct.pack("=BBH", NFPROTO_INET, 0, 0)
    body += _attr(NFTA_CHAIN_TABLE, table.encode() + b"\0") + _attr(NFTA_CHAIN_NAME, chain.encode() + b"\0")
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, i)
        if n < 4:
            break
        out[kind & 0x3FFF] = data[i + 4:i + n]
        i += (n + 3) & ~3
    return out


def decode_policy(reply: bytes) -> int | None:
    """Pure: the chain's policy from a GETCHAIN reply (None when absent); OSError on an error."""
    policy: int | None = None
    i = 0
    while i + 16 <= len(reply):
        n, kind = struct.unpack_from("=IH", reply, i)
        if n < 16:
            break
        body = reply[i + 16:i + n]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body, 0)[0]
            if code:
                raise OSError(code, os.strerror(code))
        elif kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN:
            pol = _attrs(body[4:]).get(NFTA_CHAIN_POLICY)
            if pol is not None and len(pol) >= 4:
                policy = struct.unpack(">I", pol[:4])[0]
        i += (n + 3) & ~3
    return policy


def needs_rules(interfaces: list[str]) -> bool:
    """Pure: a namespace with any interface besides `lo` can reach out."""
    return any(name != "lo" for name in interfaces)


def chain_policy(table: str = TABLE, chain: str = CHAIN) -> int | None:
    """Ask the kernel (this thread's netns) for the chain's policy. ENOENT when it is missing."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        s.settimeout(2)
        s.bind((0, 0))
        s.send(encode_getchain(table, chain))
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _acked(chunk):
                break
        return decode_policy(data)
    finally:
        s.close()


def _acked(chunk: bytes) -> bool:
    i = 0
    while i + 16 <= len(chunk):
        n, kind = struct.unpack_from("=IH", chunk, i)
        if kind in (NLMSG_ERROR, NLMSG_DONE) or n < 16:
            return True
        i += (n + 3) & ~3
    return False


def check_output_guard() -> None:
    """Raise RulesMissing unless this netns has only `lo` or its egress output chain drops."""
    if not needs_rules([name for _, name in socket.if_nameindex()]):
        return
    try:
        policy = chain_policy()
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise RulesMissing(errno.ENOENT, "egress rules missing: the agent's nftables table is not loaded") \
                from None
        raise
    if policy != NF_DROP:
        raise RulesMissing(errno.EPERM, "egress rules missing: the agent's output chain does not drop")
