"""Perimeter benchmark: valid packets verified/s, garbage dropped/s, grant latency packet -> rule.

Verification runs the daemon's real decision shell (`Perimeter.handle`: limits, replay cache in
SQLite, MAC/AEAD, policy) without the firewall. Grant latency runs the real daemon in a network
namespace created here (root only) and polls the kernel's allow set through libnftables until the
element appears: UDP send -> nft element present. Goal: p99 <= 20 ms.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import row
from stockade.core import db
from stockade.perimeter import fwknop, native
from stockade.perimeter.config import PerimeterConfig
from stockade.perimeter.daemon import Perimeter
from stockade.perimeter.replay import ReplayCache

SRC = "192.0.2.10"


def _keys() -> tuple[bytes, bytes, bytes]:
    return os.urandom(32), os.urandom(64), os.urandom(32)


def _cfg(k: bytes, h: bytes, n: bytes, ports: list[str], **extra: Any) -> dict[str, Any]:
    return {"rate_per_source": 1e9, "rate_total": 1e9, **extra, "stanzas": [{
        "name": "bench", "key_base64": base64.b64encode(k).decode(), "hmac_key_base64": base64.b64encode(h).decode(),
        "native_key": base64.b64encode(n).decode(), "open_ports": ports}]}


def _throughput(p: Perimeter, packets: list[bytes], src: str, expect: str | None) -> tuple[list[int], float]:
    samples = []
    t0 = time.perf_counter()
    for w in packets:
        a = time.perf_counter_ns()
        out = p.handle(w, src)
        samples.append(time.perf_counter_ns() - a)
        if expect is not None and out != expect:
            raise AssertionError(f"expected {expect}, got {out}")
    return samples, len(packets) / (time.perf_counter() - t0)


def _verify_rows(quick: bool) -> list[dict[str, Any]]:
    n_valid = 300 if quick else 3000
    n_garbage = 2000 if quick else 20000
    k, h, n = _keys()
    cfg = PerimeterConfig.model_validate(_cfg(k, h, n, ["tcp/22"]))
    nk = native.NativeKey.from_secret(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(Path(tmp) / "stockade.db")
        now = time.time()
        p = Perimeter(cfg, ReplayCache(conn, 120, now), None)
        fw_pk = [fwknop.encode(k, h, SRC, ["tcp/22"], timestamp=int(now)) for _ in range(n_valid)]
        nat_pk = [native.encode(nk, SRC, ["tcp/22"], timestamp=now) for _ in range(n_valid)]
        s, rate = _throughput(p, fw_pk, SRC, "granted")
        rows.append(row("valid fwknop packet verified (incl. replay insert)", s, per_s=rate))
        s, rate = _throughput(p, nat_pk, SRC, "granted")
        rows.append(row("valid native packet verified (incl. replay insert)", s, per_s=rate))
        s, rate = _throughput(p, fw_pk[: n_valid // 2], SRC, "replay")
        rows.append(row("replayed packet dropped", s, per_s=rate))
        garbage = [os.urandom(200) for _ in range(n_garbage)]
        s, rate = _throughput(p, garbage, "198.51.100.7", None)
        rows.append(row("garbage 200 random bytes dropped", s, per_s=rate))
        b64 = [b"x" + base64.b64encode(os.urandom(153)).rstrip(b"=") for _ in range(n_garbage)]
        s, rate = _throughput(p, b64, "198.51.100.7", "bad_hmac")
        rows.append(row("garbage base64 204 chars dropped (HMAC)", s, per_s=rate))
        fake_native = [b"\x01" + os.urandom(60) for _ in range(n_garbage)]
        s, rate = _throughput(p, fake_native, "198.51.100.7", "unknown_key")
        rows.append(row("garbage native-looking dropped (key id)", s, per_s=rate))
        conn.close()
    return rows


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:   # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def _latency_row(quick: bool) -> dict[str, Any]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return {"case": "grant latency packet -> nft element", "skipped": "needs root (network namespace)"}
    from stockade.core.home import Home, write_private
    from stockade.perimeter.nft import Firewall

    samples_n = 40 if quick else 300
    ports = [f"tcp/{10000 + i}" for i in range(samples_n)]
    ns = f"stkbench{os.getpid()}"
    k, h, n = _keys()
    nk = native.NativeKey.from_secret(n)
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    tmp = tempfile.mkdtemp(prefix="stockade-bench-perimeter-")
    proc = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        home = Home.at(Path(tmp) / "home")
        home.ensure_layout()
        import yaml

        write_private(home.config_path, yaml.safe_dump({"version": 1, "perimeter": _cfg(
            k, h, n, ports, grant_seconds=60)}))
        home.db().close()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "stockade", "perimeter", "serve",
                                 "--home", str(home.root), "--listen", "127.0.0.1"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready", ready
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(orig, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        _setns(f"/run/netns/{ns}")
        fw = Firewall()
        samples = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for spec in ports:
                port = int(spec.split("/")[1])
                wire = native.encode(nk, "127.0.0.1", [spec], timestamp=time.time())
                t0 = time.perf_counter_ns()
                s.sendto(wire, ("127.0.0.1", 62201))
                deadline = time.monotonic() + 2
                while not any(g["port"] == port for g in fw.grants()):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no grant for {spec}")
                samples.append(time.perf_counter_ns() - t0)
                time.sleep(0.005)
        fw.nft.close()
        return row("grant latency packet -> nft element", samples, goal_p99_us=20_000)
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(orig, 0x40000000)
        os.close(orig)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool) -> dict[str, Any]:
    return {"bench": "perimeter", "results": [*_verify_rows(quick), _latency_row(quick)]}
