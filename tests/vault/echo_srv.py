"""Echo server for the vault canary: run inside a test-host netns, never on a real network.

    echo_srv.py PORT LOGFILE

Every request is answered with its method, path, headers and body, each header value also
base64-, hex-, URL-encoded and inside a Basic-auth style base64 blob: the worst server for leaks.
"""

from __future__ import annotations

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _any(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        hs = dict(self.headers.items())
        vals = list(hs.values())
        doc = {"method": self.command, "path": self.path, "headers": hs, "body": body.decode(errors="replace"),
               "b64": [base64.b64encode(v.encode()).decode() for v in vals],
               "hex": [v.encode().hex() for v in vals],
               "url": [quote(v, safe="") for v in vals],
               "basic": [base64.b64encode(b"user:" + v.encode()).decode() for v in vals]}
        out = json.dumps(doc).encode()
        self.send_response(500 if self.path.startswith("/fail") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Echo", vals[0] if vals else "")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _any  # noqa: N815


if __name__ == "__main__":
    srv = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)  # noqa: S104 - inside a test netns
    srv.daemon_threads = True
    with open(sys.argv[2], "a") as f:
        f.write("ready\n")
    srv.serve_forever()
