"""Pure parts: the allowlisted URL parser and the HMAC request signature (no I/O)."""

import hashlib
import hmac
import re
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


_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?$")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,12}-[A-Z0-9]{2,12}$")


def _amount(name: str, v: object) -> tuple[int, int]:
    """A positive plain decimal string as an exact (digits, scale): "0.25" -> (25, 2). Integer
    arithmetic only (the sandbox's stdlib subset has no decimal module)."""
    if not isinstance(v, str) or not _DECIMAL.match(v):
        raise PackError("InvalidInput", f"{name}: a positive plain decimal string like \"0.25\"")
    whole, _, frac = v.partition(".")
    digits = int(whole + frac)
    if digits <= 0:
        raise PackError("InvalidInput", f"{name}: must be more than 0")
    return digits, len(frac)


def _same_value(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] * 10 ** b[1] == b[0] * 10 ** a[1]


def check_order(args: dict) -> dict:
    """The order to send, checked: positive decimal quantity and price, and `notional` equal to
    quantity x price exactly, so a policy rule on /notional decides on what the order is worth
    (an agent cannot claim a small notional for a large order)."""
    side, symbol = args.get("side"), args.get("symbol")
    if side not in ("buy", "sell") or not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        raise PackError("InvalidInput", "side must be buy or sell and symbol like BTC-USDT")
    qty, price, notional = (_amount(n, args.get(n)) for n in ("quantity", "price", "notional"))
    product = (qty[0] * price[0], qty[1] + price[1])
    if not _same_value(product, notional):
        raise PackError("InvalidInput", "notional must equal quantity x price exactly")
    return {"symbol": symbol, "side": side, "quantity": args["quantity"], "price": args["price"],
            "notional": args["notional"]}
