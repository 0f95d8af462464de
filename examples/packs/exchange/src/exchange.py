"""exchange.get_balance and exchange.place_order: one signed request to an exchange-style API.

The request carries `X-Api-Key`, `X-Timestamp` (ms since the epoch) and `X-Signature` (hex
HMAC-SHA256 of METHOD\\nPATH\\nQUERY\\nTIMESTAMP\\nBODY with the API secret). The key and the
secret are never put into a result or an error message; the server's reply is reduced to the
fields of the output schema.
"""

import http.client
import json
import re
import time
from urllib.parse import urlencode

from .signing import PackError, check_order, message, parse_base_url, signature

PATH = "/api/v1/balance"
CONNECT_TIMEOUT = 5.0      # seconds, connect and each read
MAX_RESPONSE = 64 * 1024   # bytes; a bigger answer is refused, never buffered
_ASSET = re.compile(r"^[A-Z0-9]{1,16}$")
_AMOUNT = re.compile(r"^[0-9]{1,30}(\.[0-9]{1,30})?$")


def _header_value(name: str, v: str) -> str:
    if not v or not v.isascii() or not v.isprintable():
        raise PackError("InvalidInput", f"{name}: must be printable ASCII (a header value)")
    return v


def _fetch(scheme: str, host: str, port: int, target: str, headers: dict[str, str],
           method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=CONNECT_TIMEOUT)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > MAX_RESPONSE):
            raise PackError("ResourceExhausted", f"the exchange answered more than {MAX_RESPONSE} bytes")
        data = resp.read(MAX_RESPONSE + 1)
        if len(data) > MAX_RESPONSE:
            raise PackError("ResourceExhausted", f"the exchange answered more than {MAX_RESPONSE} bytes")
        return resp.status, data
    except PackError:
        raise
    except PermissionError:   # Landlock: this port is not in the call's egress profile
        raise PackError("EgressDenied", f"connecting to {host}:{port} is not allowed for this agent") from None
    except TimeoutError:
        raise PackError("Timeout", f"the exchange at {host}:{port} did not answer in time") from None
    except (OSError, http.client.HTTPException) as e:
        # e.g. ECONNREFUSED; nftables rejects a host outside the agent's egress (admin-prohibited)
        raise PackError("NetworkError", f"cannot reach the exchange at {host}:{port} ({type(e).__name__})") from None
    finally:
        conn.close()


def get_balance(args: dict) -> dict:
    scheme, host, port = parse_base_url(args["base_url"])
    key = _header_value("api_key", args["api_key"])
    secret = args["api_secret"]
    query = urlencode({"account": args["account"]})
    ts = str(int(time.time() * 1000))
    sig = signature(secret, message("GET", PATH, query, ts, ""))
    headers = {"X-Api-Key": key, "X-Timestamp": ts, "X-Signature": sig,
               "Accept": "application/json", "Accept-Encoding": "identity", "Connection": "close"}
    status, data = _fetch(scheme, host, port, f"{PATH}?{query}", headers)
    if status == 401:
        raise PackError("UpstreamError", "the exchange refused the credentials (HTTP 401: bad key or signature)")
    if status != 200:
        raise PackError("UpstreamError", f"the exchange answered HTTP {status}")
    try:
        doc = json.loads(data)
        balances = doc["balances"]
        server_time = doc["server_time"]
        if not isinstance(balances, dict) or not isinstance(server_time, int) or isinstance(server_time, bool):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise PackError("UpstreamError", "the exchange's answer is not a balance document") from None
    out = {}
    for asset, amount in balances.items():
        if not (isinstance(asset, str) and _ASSET.match(asset) and isinstance(amount, str) and _AMOUNT.match(amount)):
            raise PackError("UpstreamError", "the exchange's answer holds a malformed balance")
        out[asset] = amount
    return {"account": args["account"], "balances": out, "server_time": server_time}


ORDER_PATH = "/api/v1/order"
_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def place_order(args: dict) -> dict:
    """A signed POST of one limit order. `notional` must equal quantity x price exactly
    (check_order): the owner's policy decides on it, so it must be what the order is worth."""
    scheme, host, port = parse_base_url(args["base_url"])
    order = check_order(args)
    key = _header_value("api_key", args["api_key"])
    body = json.dumps(order, sort_keys=True, separators=(",", ":"))
    ts = str(int(time.time() * 1000))
    sig = signature(args["api_secret"], message("POST", ORDER_PATH, "", ts, body))
    headers = {"X-Api-Key": key, "X-Timestamp": ts, "X-Signature": sig, "Content-Type": "application/json",
               "Accept": "application/json", "Accept-Encoding": "identity", "Connection": "close"}
    status, data = _fetch(scheme, host, port, ORDER_PATH, headers, "POST", body.encode())
    if status == 401:
        raise PackError("UpstreamError", "the exchange refused the credentials (HTTP 401: bad key or signature)")
    if status != 200:
        raise PackError("UpstreamError", f"the exchange answered HTTP {status}")
    try:
        doc = json.loads(data)
        order_id, state = doc["order_id"], doc["status"]
        if not (isinstance(order_id, str) and _ORDER_ID.match(order_id) and state in ("accepted", "filled")):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise PackError("UpstreamError", "the exchange's answer is not an order confirmation") from None
    return {"order_id": order_id, "status": state, **order}
