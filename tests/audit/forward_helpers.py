"""A real rsyslog receiving RFC 5425 (syslog over TLS) on loopback, with a CA made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def make_ca(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 (PEM files in `d`)."""
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockade test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    os.chmod(out["key"], 0o600)
    return out


class Rsyslog:
    """rsyslogd in the foreground: imtcp with the gtls driver, every message's raw text to `out`."""

    def __init__(self, d: Path, certs: dict[str, Path], port: int):
        self.d, self.port, self.out = d, port, d / "received.log"
        self.proc: subprocess.Popen[bytes] | None = None
        work = d / "work"
        work.mkdir(parents=True, exist_ok=True)
        self.conf = d / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{work}" maxMessageSize="1m"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{certs['ca']}"
       DefaultNetstreamDriverCertFile="{certs['cert']}"
       DefaultNetstreamDriverKeyFile="{certs['key']}")
main_queue(queue.type="Direct")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
""")

    def start(self, timeout: float = 20) -> None:
        log = open(self.d / "rsyslogd.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.d / "rsyslogd.pid")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited: {(self.d / 'rsyslogd.out').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("rsyslogd did not listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_SD = re.compile(rb'\[stockade@32473 seq="(\d+)" hash="([0-9a-f]{64})" prev="([0-9a-f]{64})"\]')


def received(path: Path) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """seq -> (hash, prev, record) of every message rsyslog wrote (repeats collapse)."""
    import json

    out: dict[int, tuple[str, str, dict[str, Any]]] = {}
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        m = _SD.search(line)
        if not m:
            continue
        body = line[line.index(b"{", m.end()):]
        rec = json.loads(body)
        assert rec["seq"] == int(m.group(1)) and rec["hash"] == m.group(2).decode()
        out[int(m.group(1))] = (m.group(2).decode(), m.group(3).decode(), rec)
    return out


def assert_continuous(got: dict[int, tuple[str, str, dict[str, Any]]], last: int) -> None:
    """Every seq 1..last arrived, and each links to the one before (the receiver's own check)."""
    missing = [s for s in range(1, last + 1) if s not in got]
    assert not missing, f"missing seqs: {missing[:20]} ({len(missing)} in all)"
    for s in range(2, last + 1):
        assert got[s][1] == got[s - 1][0], f"seq {s} does not link to seq {s - 1}"
