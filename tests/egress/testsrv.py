"""Test servers run inside test-host network namespaces (never on a real network).

    testsrv.py http LOG PORT [PORT...]     HTTP on 0.0.0.0:PORT..., every accepted connection logged
    testsrv.py dns LOG IP NAME A1,A2 B1 ...  UDP DNS on IP:53: query n for NAME gets answer set n
                                           (the last set repeats), every query logged

HTTP paths: /hello, /redirect?to=URL[&code=302], /big?n=BYTES, /endless, /drip, /echo.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))   # the checkout (dns helpers)

LOG_LOCK = threading.Lock()


def log(path: str, line: str) -> None:
    with LOG_LOCK, open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/plain", extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        local = self.connection.getsockname()
        if u.path == "/hello":
            self._send(200, f"hello from {local[0]}:{local[1]}".encode())
        elif u.path == "/redirect":
            self._send(int(q.get("code", "302")), b"", extra={"Location": q.get("to", "/hello")})
        elif u.path == "/big":
            self._send(200, b"x" * int(q.get("n", "1000")), "application/octet-stream")
        elif u.path == "/binary":
            self._send(200, bytes(range(256)), "application/octet-stream")
        elif u.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"y" * 65536)
            except OSError:
                return
        elif u.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"d")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        elif u.path == "/echo":
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            self._send(200, json.dumps({"method": self.command, "headers": dict(self.headers.items()),
                                        "body": body.decode(errors="replace")}).encode(), "application/json")
        else:
            self._send(404, b"not found")

    do_POST = do_GET  # noqa: N815
    do_HEAD = do_GET  # noqa: N815


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    logfile = ""

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        local = request.getsockname()
        log(self.logfile, f"conn {local[0]}:{local[1]} from {client_address[0]}")  # type: ignore[index]
        super().process_request(request, client_address)


def http(logfile: str, ports: list[int]) -> None:
    servers = []
    for p in ports:
        s = Server(("0.0.0.0", p), Handler)
        s.logfile = logfile
        servers.append(s)
        threading.Thread(target=s.serve_forever, daemon=True).start()
    log(logfile, "ready")
    while True:
        time.sleep(3600)


def dnsserver(logfile: str, ip: str, name: str, answer_sets: list[list[str]]) -> None:
    from stockade.egress import dns

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 53))   # replies must come from the address that was asked
    log(logfile, "ready")
    n = 0
    while True:
        data, peer = s.recvfrom(4096)
        try:
            qname, _ = dns._read_name(data, 12)
        except Exception:
            continue
        if qname == name:
            answers = answer_sets[min(n, len(answer_sets) - 1)]
            n += 1
        else:
            answers = []
        log(logfile, f"query {qname} from {peer[0]} -> {','.join(answers)}")
        s.sendto(dns.build_response(data, answers, ttl=5), peer)


if __name__ == "__main__":
    mode, logfile = sys.argv[1], sys.argv[2]
    if mode == "http":
        http(logfile, [int(p) for p in sys.argv[3:]])
    else:
        dnsserver(logfile, sys.argv[3], sys.argv[4], [a.split(",") if a else [] for a in sys.argv[5:]])
