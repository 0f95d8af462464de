"""Perimeter fixtures: keys, a home with stanzas, and a 3-namespace lab (server + two clients).

The lab: server namespace with a bridge 10.77.0.1/24, client A 10.77.0.2 and client B
10.77.0.3 on veth pairs; a real OpenSSH sshd on port 22 in the server namespace (generated host
key, our own config file), `stockade perimeter serve` run there with `ip netns exec`. Names
include the pid; teardown stops everything and deletes the namespaces (their tables go with them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need, need_root

HERE = Path(__file__).resolve().parent
SERVER_IP, A_IP, B_IP = "10.77.0.1", "10.77.0.2", "10.77.0.3"


def keys() -> dict[str, str]:
    return {"key_base64": base64.b64encode(os.urandom(32)).decode(),
            "hmac_key_base64": base64.b64encode(os.urandom(64)).decode(),
            "native_key": base64.b64encode(os.urandom(32)).decode()}


def write_home(root: Path, perimeter: dict[str, Any]) -> Path:
    """A minimal real home: stockade.yaml (0600) with a perimeter section, and stockade.db."""
    import yaml

    from stockade.core.home import Home, write_private
    from stockade.perimeter import replay  # noqa: F401 - schema

    h = Home.at(root)
    h.ensure_layout()
    write_private(h.config_path, yaml.safe_dump({"version": 1, "perimeter": perimeter}, sort_keys=False))
    h.db().close()
    return root


def fwknop_cmd(k: dict[str, str], *args: str) -> list[str]:
    return ["fwknop", "--no-rc-file", "--no-save-args", "--use-hmac", "--key-base64-rijndael", k["key_base64"],
            "--key-base64-hmac", k["hmac_key_base64"], *args]


def fwknop_packet(tmp: Path, k: dict[str, str], *args: str, name: str = "pkt") -> bytes:
    """Generate (not send) one packet with Debian's fwknop client; returns the wire bytes."""
    need(shutil.which("fwknop") is not None, "Debian fwknop-client is not installed")
    out = tmp / f"{name}.{time.monotonic_ns()}"
    cmd = fwknop_cmd(k, "-D", "127.0.0.1", "-T", "-B", str(out), *args)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": str(tmp)}, timeout=20)
    assert p.returncode == 0 and out.exists(), p.stdout + p.stderr
    return out.read_bytes().strip()


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {p.returncode} {p.stderr}")
    return p


class NsAgent:
    def __init__(self, ns: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(HERE / "nsagent.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def ssh_port(self, timeout: float = 0.8) -> str:
        return self(op="connect", host=SERVER_IP, port=22, timeout=timeout)["result"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)

    def outcomes(self) -> list[str]:
        return [e["outcome"] for e in list(self.events) if e.get("event") == "spa"]

    def wait_outcome(self, n_before: int, timeout: float = 5.0) -> dict[str, Any]:
        """The first SPA event after the n_before-th one."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            spa = [e for e in list(self.events) if e.get("event") == "spa"]
            if len(spa) > n_before:
                return spa[n_before]
            time.sleep(0.02)
        raise AssertionError(f"no SPA event from the daemon; events: {self.events[-5:]}")

    def count(self) -> int:
        return len([e for e in list(self.events) if e.get("event") == "spa"])


@dataclass
class Lab:
    tag: str
    srv: str
    ns_a: str
    ns_b: str
    tmp: Path
    home: Path
    keys: dict[str, str]
    a: NsAgent
    b: NsAgent
    daemon: Daemon | None = None
    sshd: subprocess.Popen[str] | None = None
    ssh_key: Path | None = None

    def nft_json(self, *args: str) -> dict[str, Any] | None:
        p = sh("ip", "netns", "exec", self.srv, "nft", "-j", *args, check=False)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def grants(self) -> list[tuple[str, str, int]]:
        data = self.nft_json("list", "set", "inet", "stockade_perimeter", "allow4")
        if data is None:
            return []
        out = []
        for item in data["nftables"]:
            for el in item.get("set", {}).get("elem", []) or []:
                val = el["elem"]["val"] if isinstance(el, dict) and "elem" in el else el
                ip, proto, port = val["concat"]
                out.append((ip, proto, port))
        return out

    def table_exists(self) -> bool:
        return self.nft_json("list", "table", "inet", "stockade_perimeter") is not None

    def start_daemon(self) -> Daemon:
        proc = subprocess.Popen(["ip", "netns", "exec", self.srv, sys.executable, "-m", "stockade", "perimeter",
                                 "serve", "--home", str(self.home)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        d = Daemon(proc)

        def pump(stream: Any) -> None:
            for line in stream:
                try:
                    d.events.append(json.loads(line))
                except ValueError:
                    d.events.append({"event": "text", "line": line.rstrip()})

        assert proc.stdout and proc.stderr
        threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=pump, args=(proc.stderr,), daemon=True).start()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            ready = [e for e in list(d.events) if e.get("event") == "ready"]
            if ready:
                d.ready = ready[0]
                self.daemon = d
                return d
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"daemon did not start: {d.events}")

    def stop_daemon(self, sig: int = 15) -> int:
        assert self.daemon
        self.daemon.proc.send_signal(sig)
        rc = self.daemon.proc.wait(timeout=10)
        time.sleep(0.1)
        self.daemon = None
        return rc

    def wait_grant(self, ip: str, timeout: float = 3.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(g[0] == ip for g in self.grants()):
                return
            time.sleep(0.02)
        raise AssertionError(f"no grant for {ip}; daemon events: {self.daemon.events[-3:] if self.daemon else None}")

    def wait_no_grants(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.grants():
                return
            time.sleep(0.1)
        raise AssertionError(f"grants did not expire: {self.grants()}")


def _sshd(lab: Lab) -> None:
    d = lab.tmp / "sshd"
    d.mkdir(mode=0o700)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_ed25519"))
    (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
    conf = d / "sshd_config"
    conf.write_text(f"""Port 22
ListenAddress 0.0.0.0
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation directory
    lab.sshd = subprocess.Popen(["ip", "netns", "exec", lab.srv, "/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lab.ssh_key = d / "client_ed25519"
    # sshd is listening once a connection from inside the server namespace succeeds.
    end = time.monotonic() + 10
    while time.monotonic() < end:
        p = sh("ip", "netns", "exec", lab.srv, sys.executable, "-c",
               "import socket; socket.create_connection(('127.0.0.1', 22), 1).close()", check=False)
        if p.returncode == 0:
            return
        if lab.sshd.poll() is not None:
            raise AssertionError(f"sshd exited: {lab.sshd.stderr.read() if lab.sshd.stderr else ''}")
        time.sleep(0.1)
    raise AssertionError("sshd did not start")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_root()
    need(shutil.which("fwknop") is not None, "Debian fwknop-client is not installed")
    need(Path("/usr/sbin/sshd").exists(), "openssh-server is not installed")
    need(shutil.which("ip") is not None, "iproute2 is not installed")
    tag = f"{os.getpid()}"
    srv, ns_a, ns_b = f"stkp-s{tag}", f"stkp-a{tag}", f"stkp-b{tag}"
    tmp = tmp_path_factory.mktemp("perimeter-lab")
    created: list[str] = []
    agents: list[NsAgent] = []
    lab_obj: Lab | None = None
    try:
        for ns in (srv, ns_a, ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", srv, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        sh("ip", "-n", srv, "link", "set", "br0", "up")
        for side, ns, ip in (("a", ns_a, A_IP), ("b", ns_b, B_IP)):
            sh("ip", "-n", srv, "link", "add", f"v{side}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", srv, "link", "set", f"v{side}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        k = keys()
        home = write_home(tmp / "home", {
            "grant_seconds": 3,
            "stanzas": [{"name": "laptop", **k, "open_ports": ["tcp/22"], "max_grant_seconds": 5}],
        })
        agents = [NsAgent(ns_a), NsAgent(ns_b)]
        lab_obj = Lab(tag, srv, ns_a, ns_b, tmp, home, k, agents[0], agents[1])
        _sshd(lab_obj)
        yield lab_obj
    finally:
        if lab_obj is not None:
            if lab_obj.daemon is not None:
                lab_obj.daemon.proc.terminate()
                try:
                    lab_obj.daemon.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    lab_obj.daemon.proc.kill()
            if lab_obj.sshd is not None:
                lab_obj.sshd.terminate()
                lab_obj.sshd.wait(timeout=10)
        for a in agents:
            a.close()
        for ns in created:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "stockade_perimeter"],
                           capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
