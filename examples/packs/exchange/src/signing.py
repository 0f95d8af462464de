"""Pure parts: the allowlisted URL parser and the HMAC request signature (no I/O)."""

import hashlib
import hmac
from urllib.parse import urlsplit

# Where this pack may send the key (scheme, host, port). Mirrors pack.yaml sandbox.egress: the
# pack refuses anything else itself, before the sandbox's Landlock and nftables layers would.
ALLOWED = frozenset({
    ("https", "api.exchange.example", 443),
    ("http", "198.51.100.77", 8443),    # the test exchange (TEST-NET-2, in a test netns)
    ("http", "198.51.100.77", 8444),    # listed here but not in the test agent's policy
})


class PackError(Exception):
    """An error the stockade runner reports with its `error_type` and this message."""

    error_type = "InvalidInput"

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def parse_base_url(url: str) -> tuple[str, str, int]:
    """`http(s)://host[:port][/]` on the allowlist -> (scheme, host, port). Nothing else."""
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F or c in "@\\%#?" for c in url):
        raise PackError("InvalidInput", "base_url: only http(s)://host[:port] is accepted")
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise PackError("InvalidInput", "base_url: not a valid URL") from None
    host = (u.hostname or "").lower()
    if u.scheme not in ("http", "https") or not host or u.path not in ("", "/") or u.query or u.fragment:
        raise PackError("InvalidInput", "base_url: only http(s)://host[:port] is accepted")
    port = port or (443 if u.scheme == "https" else 80)
    if (u.scheme, host, port) not in ALLOWED:
        raise PackError("EgressDenied", f"base_url: {u.scheme}://{host}:{port} is not an exchange this pack "
                                        "talks to")
    return u.scheme, host, port


def message(method: str, path: str, query: str, timestamp: str, body: str) -> bytes:
    """METHOD\\nPATH\\nQUERY\\nTIMESTAMP\\nBODY, UTF-8: what both sides sign."""
    return "\n".join([method.upper(), path, query, timestamp, body]).encode("utf-8")


def signature(secret: str, msg: bytes) -> str:
    """Lower-case hex HMAC-SHA256."""
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()
