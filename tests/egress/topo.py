"""Test hosts in network namespaces we create (names carry the pid), wired to the host by veth.

Each test host gets a private /30 link to the host (10.251.<k>.x) and a *service address* on its
loopback, routed by the host through that link: so a test host can stand in for a public
server (TEST-NET-2/3), a private-range server, or the 169.254.169.254 metadata endpoint, and
all traffic stays on this machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
K = os.getpid() % 200 + 20
# service addresses: A and B stand in for public hosts (TEST-NET-2/3), P is private, META is the
# cloud metadata endpoint, R a DNS resolver. Routed by the host to our own namespaces only.
A_IP, B_IP, P_IP, META_IP, R_IP = "198.51.100.10", "203.0.113.20", f"10.250.{K}.10", "169.254.169.254", "203.0.113.53"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr}")
    return r


# RFC 5737 TEST-NET-2/3 (not TEST-NET-1: CI machines of this kind have their own uplink in 192.0.2.0/24)
DOC_NETS = ("198.51.100.0/24", "203.0.113.0/24")


class TestHost:
    __test__ = False

    def __init__(self, idx: int, service_ip: str, logdir: Path):
        pid = os.getpid()
        self.ns = f"stkt{pid}-{idx}"
        self.veth = f"stt{pid % 100000}x{idx}"
        k = pid % 200 + 20
        self.link_host = f"10.251.{k}.{4 * idx + 1}"
        self.link_peer = f"10.251.{k}.{4 * idx + 2}"
        self.ip = service_ip
        self.log = logdir / f"{self.ns}.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def up(self) -> TestHost:
        self.down()
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.link_host}/30", "dev", self.veth)
        sh("ip", "link", "set", self.veth, "up")
        batch = (f"link set lo up\nlink set eth0 up\naddr add {self.link_peer}/30 dev eth0\n"
                 f"addr add {self.ip}/32 dev lo\nroute add default via {self.link_host}\n")
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=batch, text=True, check=True, timeout=30)
        # A blackhole behind the host route: if this test host goes away while something still
        # sends to its address, the packets die here instead of leaving through the uplink (which
        # on CI machines answers any address). Only for documentation ranges (never the metadata
        # address or a private range the machine may really use), and left in place.
        if any(ipaddress.ip_address(self.ip) in ipaddress.ip_network(n) for n in DOC_NETS):
            sh("ip", "route", "replace", "blackhole", f"{self.ip}/32", "metric", "4242")
        sh("ip", "route", "replace", f"{self.ip}/32", "via", self.link_peer, "dev", self.veth)
        return self

    def serve_http(self, *ports: int) -> TestHost:
        self._spawn("http", *map(str, ports))
        return self

    def serve_dns(self, name: str, *answer_sets: str) -> TestHost:
        self._spawn("dns", self.ip, name, *answer_sets)
        return self

    def _spawn(self, *args: str) -> None:
        self.log.write_text("")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, PY, str(HERE / "testsrv.py"), args[0], str(self.log),
                              *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + 20
        while "ready" not in self.log.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"test server in {self.ns} did not start")
            time.sleep(0.05)

    def connections(self, port: int | None = None) -> list[str]:
        lines = [x for x in self.log.read_text().splitlines() if x.startswith("conn ")]
        return [x for x in lines if port is None or f":{port} " in x]

    def queries(self) -> list[str]:
        return [x for x in self.log.read_text().splitlines() if x.startswith("query ")]

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
        self.procs.clear()
        sh("ip", "route", "del", f"{self.ip}/32", "via", self.link_peer, check=False)
        if os.path.exists(f"/sys/class/net/{self.veth}"):
            sh("ip", "link", "del", self.veth, check=False)
        if os.path.exists(f"/run/netns/{self.ns}"):
            sh("ip", "netns", "del", self.ns, check=False)


def in_ns(netns_path: str, code: str, *args: str, timeout: float = 60) -> dict:
    """Run Python `code` inside a namespace (nsenter on the path); it must print one JSON line."""
    r = subprocess.run(["nsenter", f"--net={netns_path}", PY, "-c", code, *args], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"in_ns failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


RAW_CONNECT = """
import json, socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(json.dumps({"connected": True}))
except OSError as e:
    print(json.dumps({"connected": False, "error": f"{type(e).__name__}: {e}"}))
"""

RAW_UDP = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(float(sys.argv[3]))
try:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2]))); s.recv(10); print(json.dumps({"answered": True}))
except OSError as e:
    print(json.dumps({"answered": False, "error": f"{type(e).__name__}: {e}"}))
"""

CAPABILITY = """
import json, sys
from stockade.capabilities.impl import network
from stockade.core.errors import StockadeError
req = json.loads(sys.argv[1])
ctx = {"agent": req["agent"], "extra": {"egress": req["view"]}, "profile": {"egress": req["view"]["entries"]}}
try:
    out = {"ok": getattr(network, req["fn"])(ctx, req["args"])}
except StockadeError as e:
    out = {"error": {"type": e.type, "message": e.message, **e.data}}
print(json.dumps(out))
"""


def raw_connect(netns_path: str, ip: str, port: int, timeout: float = 3.0) -> dict:
    return in_ns(netns_path, RAW_CONNECT, ip, str(port), str(timeout))


def capability(netns_path: str, agent: str, view: dict, fn: str, args: dict) -> dict:
    return in_ns(netns_path, CAPABILITY, json.dumps({"agent": agent, "view": view, "fn": fn, "args": args}))
