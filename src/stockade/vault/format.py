"""The vault.db format of docs/design.md "Formats", as pure functions (no I/O, no clock, no randomness).

Everything an owner needs to recover a secret with standard tools is here: the KDF JSON, the
associated data, the nonce/ciphertext layout and the verifier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from stockade.core.agents import check_name
from stockade.core.encoding import canonical_json
from stockade.core.errors import err

KDF_ALG = "argon2id"
M_KIB, T_COST, PARALLELISM, KEY_LEN, SALT_LEN, NONCE_LEN, TAG_LEN = 65536, 3, 4, 32, 16, 12, 16
# Bounds accepted when reading a vault (a corrupted or hostile kdf row must not make us allocate
# gigabytes or spin for minutes before saying it is broken).
MAX_M_KIB, MAX_T, MAX_P = 4 * 1024 * 1024, 64, 64
VERIFIER_PLAINTEXT = b"stockade vault verifier v1"
VERIFIER_NAME = ""          # no secret can have an empty name, so the verifier never collides
FORMAT_VERSION = "2"      # 2: secrets bound to agents, disclosure recorded (format 1 rows still read)
MAX_NAME = 128
MAX_VALUE = 64 * 1024
CAPABILITY_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class KdfParams:
    salt: bytes
    m_kib: int = M_KIB
    t: int = T_COST
    p: int = PARALLELISM

    def to_json(self) -> str:
        """The `vault_meta.kdf` value, exactly as docs/design.md "Formats" shows it."""
        return json.dumps({"alg": KDF_ALG, "m_kib": self.m_kib, "t": self.t, "p": self.p,
                           "salt": base64.b64encode(self.salt).decode()})


def parse_kdf(raw: Any) -> KdfParams:
    """`vault_meta.kdf` -> params; VaultCorrupt for anything that is not a sane Argon2id row."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("alg") != KDF_ALG:
            raise ValueError("alg")
        m, t, p = d["m_kib"], d["t"], d["p"]
        if not all(type(x) is int for x in (m, t, p)):
            raise ValueError("types")
        if not (8 * p <= m <= MAX_M_KIB and 1 <= t <= MAX_T and 1 <= p <= MAX_P):
            raise ValueError("range")
        salt = base64.b64decode(d["salt"], validate=True)
        if len(salt) < 8:
            raise ValueError("salt")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error):
        raise err("VaultCorrupt", "vault.db: vault_meta 'kdf' is missing or not a valid Argon2id parameter "
                  "set", [{"action": "restore_backup", "description": "Restore vault.db from a backup."}]) from None
    return KdfParams(salt, m, t, p)


def aad(name: str, scope: list[str], hosts: list[str]) -> bytes:
    """Associated data: a row renamed, re-scoped or re-hosted no longer decrypts."""
    return canonical_json({"hosts": hosts, "name": name, "scope": scope}, ascii=True, allow_nan=True).encode("utf-8")


def aad_bound(name: str, scope: list[str], hosts: list[str], agents: list[str], disclosed: bool) -> bytes:
    """Format 2 associated data: also the agents a secret is bound to and whether the owner
    disclosed it to them, so a row re-bound to another agent or marked disclosed in the file
    no longer decrypts."""
    return canonical_json({"agents": agents, "disclosed": disclosed, "hosts": hosts, "name": name, "scope": scope},
                          ascii=True, allow_nan=True).encode("utf-8")


def row_aad(name: str, scope: list[str], hosts: list[str], agents: list[str] | None, disclosed: bool) -> bytes:
    """A format 1 row (no agents: from before agent binding) keeps its format 1 associated data."""
    return aad(name, scope, hosts) if agents is None else aad_bound(name, scope, hosts, agents, disclosed)


def verifier_aad() -> bytes:
    return aad(VERIFIER_NAME, [], [])


def checksum(kdf_json: str | bytes, verifier: bytes) -> str:
    """Key-independent digest of the meta rows: tells corruption from a wrong passphrase."""
    k = kdf_json.encode() if isinstance(kdf_json, str) else kdf_json
    return hashlib.sha256(len(k).to_bytes(4, "big") + k + verifier).hexdigest()


def split_sealed(blob: bytes) -> tuple[bytes, bytes]:
    """The verifier is stored as nonce || ciphertext||tag (one BLOB)."""
    if not isinstance(blob, bytes) or len(blob) < NONCE_LEN + TAG_LEN:
        raise err("VaultCorrupt", "vault.db: vault_meta 'verifier' is truncated")
    return blob[:NONCE_LEN], blob[NONCE_LEN:]


# -- names, scopes, hosts --------------------------------------------------------------------------
def validate_name(name: Any) -> str:
    """Secret names: 1..128 characters, any Unicode except controls, '}' and surrounding spaces.

    Odd characters (quotes, spaces, non-ASCII) are stored and used faithfully; '}' is excluded
    because it ends a `${secret:NAME}` reference.
    """
    if not isinstance(name, str) or not name:
        raise err("InvalidInput", "a secret name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise err("InvalidInput", f"a secret name is at most {MAX_NAME} characters")
    if name != name.strip():
        raise err("InvalidInput", "a secret name must not start or end with whitespace")
    for ch in name:
        cat = unicodedata.category(ch)
        if ch == "}" or cat in ("Cc", "Cs", "Cn", "Co"):
            raise err("InvalidInput", f"a secret name must not contain {ch!r} (control, surrogate or '}}')")
    return name


def normalize_scope(scope: Any) -> list[str]:
    """Capability names the secret may be used by: exact names, deduplicated, sorted."""
    if isinstance(scope, str):
        scope = [s for s in scope.split(",")]
    if not isinstance(scope, list | tuple) or not scope:
        raise err("InvalidInput", "a secret needs a scope: at least one capability name (--scope CAP)")
    out = set()
    for s in scope:
        if not isinstance(s, str) or not CAPABILITY_NAME.match(s.strip()):
            raise err("InvalidInput", f"scope entry {s!r} is not a capability name like network.http_request")
        out.add(s.strip())
    return sorted(out)


ALL_AGENTS = "*"
# Capabilities that hand a resolved value to code the agent controls (it can print it, write it
# to its workspace, send it anywhere it can reach): "use, never read" does not hold there. The one
# place this is decided; a secret may be scoped to one of these only with the owner's explicit
# disclosure. `network.http_request` (headers, signing in the gateway) and signed packs keep it.
DISCLOSING_CAPABILITIES = frozenset({"process.run"})


def discloses(capability: str) -> bool:
    return capability in DISCLOSING_CAPABILITIES


def normalize_agents(agents: Any, all_agents: bool) -> list[str]:
    """`--agent NAME` (repeatable) or `--all-agents`: exactly one of the two."""
    names = [agents] if isinstance(agents, str) else list(agents or [])
    if all_agents:
        if names and names != [ALL_AGENTS]:
            raise err("InvalidInput", "give either agents (--agent NAME) or --all-agents, not both")
        return [ALL_AGENTS]
    if not names:
        raise err("InvalidInput", "a secret must be bound to the agents that may use it: --agent NAME "
                  "(repeatable) or --all-agents")
    for n in names:
        if not isinstance(n, str):
            raise err("InvalidInput", "agent names must be strings")
        check_name(n)
    return sorted(set(names))


def disclosure_refusal(scope: list[str]) -> str:
    caps = ", ".join(s for s in scope if discloses(s))
    return (f"scope {caps} hands the secret's value to code the agent controls: the agent will be able to read "
            "the value (print it, write it to its workspace, send it on). Pass --disclose-to-agent to accept "
            "that, or scope the secret to network.http_request (headers, signing) where it is used, never read")


def parse_host_entry(entry: str) -> tuple[str, str, int | None]:
    """`[http://]host[:port]` or `*.suffix[:port]` -> (scheme, host, port). https unless stated."""
    e = entry.strip().lower()
    scheme = "https"
    if e.startswith("http://"):
        scheme, e = "http", e[7:]
    elif e.startswith("https://"):
        e = e[8:]
    port: int | None = None
    if e.startswith("["):                       # [v6]:port
        end = e.find("]")
        if end < 0:
            raise ValueError("bad IPv6 literal")
        host, rest = e[1:end], e[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("junk after IPv6 literal")
            port = int(rest[1:])
    elif e.count(":") == 1:
        host, p = e.split(":")
        port = int(p)
    elif ":" in e:
        host = e                                 # bare IPv6
    else:
        host = e
    host = host.rstrip(".")
    if port is not None and not 0 < port < 65536:
        raise ValueError("port out of range")
    if not host or "/" in host or "@" in host or "\\" in host or " " in host:
        raise ValueError("not a host")
    if ":" not in host:
        labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
        if host.startswith("*.") and len(labels) < 2:
            raise ValueError("a wildcard needs at least two labels after '*.' (e.g. *.example.com)")
        if not all(_HOST_LABEL.match(lab) for lab in labels):
            raise ValueError("not a DNS name or IP address")
    return scheme, host, port


def normalize_hosts(hosts: Any) -> list[str]:
    """Validate host entries; returned lower-cased, deduplicated, sorted (as stored)."""
    if hosts is None:
        return []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list | tuple):
        raise err("InvalidInput", "hosts must be a list of host names")
    out = set()
    for h in hosts:
        if not isinstance(h, str):
            raise err("InvalidInput", "hosts must be strings")
        try:
            parse_host_entry(h)
        except ValueError as e:
            raise err("InvalidInput", f"host {h!r}: {e} (use host, host:port, *.domain or http://host)") from None
        out.add(h.strip().lower().rstrip("."))
    return sorted(out)


def host_allowed(hosts: list[str], scheme: str, host: str, port: int) -> bool:
    """Does a request to scheme://host:port match one of the secret's host entries?"""
    host = host.lower().rstrip(".")
    for h in hosts:
        try:
            hs, hh, hp = parse_host_entry(h)
        except ValueError:
            continue
        if hs != scheme or (hp is not None and hp != port):
            continue
        if hh.startswith("*."):
            if host.endswith(hh[1:]) and len(host) > len(hh) - 1:
                return True
        elif hh == host:
            return True
    return False
