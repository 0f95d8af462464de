"""Self-signed TLS certificate for the dashboard (127.0.0.1, ::1, localhost), made with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.core.home import Home, write_private

VALID_DAYS = 825


def paths(home: Home) -> tuple[Path, Path]:
    return home.keys / "tls.crt", home.keys / "tls.key"


def self_signed(now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for the loopback names."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockade dashboard (localhost)")])
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def ensure(home: Home) -> list[str]:
    """Create keys/tls.crt + keys/tls.key (0600) unless the owner already put a pair there."""
    crt, key = paths(home)
    if crt.exists() and key.exists():
        return []
    home.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    c, k = self_signed()
    write_private(key, k)
    write_private(crt, c)
    return [str(crt), str(key)]
