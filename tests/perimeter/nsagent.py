"""A tiny helper run inside a client network namespace (`ip netns exec NS python nsagent.py`).

Reads one JSON command per line on stdin, answers one JSON line on stdout. Keeping one process
per namespace makes many connect probes cheap (no interpreter start per probe).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time

held: dict[str, socket.socket] = {}


def connect(host: str, port: int, timeout: float) -> tuple[str, socket.socket | None, bytes]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except TimeoutError:
        s.close()
        return "timeout", None, b""          # no SYN-ACK and no RST
    except ConnectionRefusedError:
        s.close()
        return "refused", None, b""          # a RST came back
    except OSError as e:
        s.close()
        return f"error:{e.errno}", None, b""  # e.g. ICMP unreachable
    try:
        banner = s.recv(256)
    except TimeoutError:
        banner = b""
    return "open", s, banner


def handle(cmd: dict) -> dict:
    op = cmd["op"]
    if op == "connect":
        res, s, banner = connect(cmd["host"], cmd["port"], cmd.get("timeout", 0.8))
        if s:
            s.close()
        return {"result": res, "banner": banner.decode(errors="replace")}
    if op == "hold":
        res, s, banner = connect(cmd["host"], cmd["port"], cmd.get("timeout", 2.0))
        if s:
            held[cmd["id"]] = s
        return {"result": res, "banner": banner.decode(errors="replace")}
    if op == "poke":
        s = held[cmd["id"]]
        s.settimeout(3.0)
        try:
            s.sendall(b"SSH-2.0-stockade_test\r\n")
            data = s.recv(4096)
        except OSError as e:
            return {"result": f"error:{e}"}
        return {"result": "alive" if data else "closed", "n": len(data)}
    if op == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(base64.b64decode(cmd["data"]), (cmd["host"], cmd["port"]))
        return {"result": "sent"}
    if op == "udp_probe":
        # A connected UDP socket reports an ICMP port-unreachable as ECONNREFUSED on recv.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((cmd["host"], cmd["port"]))
            s.settimeout(cmd.get("timeout", 1.0))
            s.send(os.urandom(200))
            try:
                s.recv(2048)
                return {"result": "reply"}
            except TimeoutError:
                return {"result": "silent"}
            except ConnectionRefusedError:
                return {"result": "icmp_unreachable"}
    if op == "flood":
        n, size = cmd["count"], cmd.get("size", 200)
        t = time.perf_counter()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(n):
                s.sendto(os.urandom(size), (cmd["host"], cmd["port"]))
        return {"result": "sent", "seconds": time.perf_counter() - t}
    return {"result": "unknown op"}


def main() -> None:
    for line in sys.stdin:
        try:
            out = handle(json.loads(line))
        except Exception as e:  # report, keep serving
            out = {"result": f"exception:{type(e).__name__}:{e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
