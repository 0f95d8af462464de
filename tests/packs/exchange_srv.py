"""A test exchange for the exchange example pack: run inside a test-host netns, never on a real network.

    exchange_srv.py LOGFILE KEYFILE PORT...

KEYFILE holds `api_key\\napi_secret`. GET /api/v1/balance?account=A with X-Api-Key, X-Timestamp and
X-Signature = hex HMAC-SHA256(secret, METHOD\\nPATH\\nQUERY\\nTIMESTAMP\\nBODY) answers a balance;
anything else is 401, and (to tempt leaks) the 401 body echoes the key it received, raw and base64.
Every connection is logged as `conn PORT`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

LOG = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
with open(sys.argv[2]) as _f:
    KEY, SECRET = _f.read().split("\n")[:2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _send(self, status: int, doc: dict) -> None:
        out = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:  # noqa: N802
        LOG.write(f"conn {self.server.server_address[1]} {self.path}\n")
        u = urlsplit(self.path)
        key, ts, sig = (self.headers.get(h, "") for h in ("X-Api-Key", "X-Timestamp", "X-Signature"))
        msg = "\n".join(["GET", u.path, u.query, ts, ""]).encode()
        want = hmac.new(SECRET.encode(), msg, hashlib.sha256).hexdigest()
        fresh = ts.isdigit() and abs(int(ts) - time.time() * 1000) < 30_000
        if u.path != "/api/v1/balance" or not hmac.compare_digest(key, KEY) or not fresh \
                or not hmac.compare_digest(sig, want):
            LOG.write("reject\n")
            self._send(401, {"error": "invalid signature", "key": key,
                             "key_b64": base64.b64encode(key.encode()).decode()})
            return
        LOG.write("accept\n")
        account = u.query.partition("account=")[2]
        self._send(200, {"account": account, "balances": {"BTC": "0.50000000", "USD": "1234.56"},
                         "server_time": int(time.time() * 1000)})


    def do_POST(self) -> None:  # noqa: N802
        """POST /api/v1/order: a signed JSON limit order -> {order_id, status}; logged `order N`."""
        LOG.write(f"conn {self.server.server_address[1]} {self.path}\n")
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(n, 65536)).decode()
        key, ts, sig = (self.headers.get(h, "") for h in ("X-Api-Key", "X-Timestamp", "X-Signature"))
        want = hmac.new(SECRET.encode(), "\n".join(["POST", self.path, "", ts, body]).encode(),
                        hashlib.sha256).hexdigest()
        fresh = ts.isdigit() and abs(int(ts) - time.time() * 1000) < 30_000
        if self.path != "/api/v1/order" or not hmac.compare_digest(key, KEY) or not fresh \
                or not hmac.compare_digest(sig, want):
            LOG.write("reject\n")
            self._send(401, {"error": "invalid signature"})
            return
        order = json.loads(body)
        LOG.write(f"order {order['notional']}\n")
        self._send(200, {"order_id": f"ord-{int(time.time() * 1000)}", "status": "accepted"})


if __name__ == "__main__":
    for port in sys.argv[3:]:
        srv = ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)  # noqa: S104 - inside a test netns
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    LOG.write("ready\n")
    threading.Event().wait()
