"""vault.db is recoverable with standard tools, exactly as docs/design.md "Formats" documents it.

The decryptor below uses nothing of stockade: sqlite3, argon2-cffi, cryptography, the passphrase.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.vault import format as F
from stockade.vault import keys
from stockade.vault.store import VaultFile

PASS = "pässphrase with spaces & ünïcode"
VALUE = "sk_live_\x01\"quoted\" ✓ value"


def independent_decrypt(db: Path, name: str, passphrase: str, mutate=None) -> bytes:  # type: ignore[no-untyped-def]
    """docs/design.md "Formats", by hand. `mutate(field, value) -> value` lets a test corrupt one field."""
    m = mutate or (lambda f, v: v)
    c = sqlite3.connect(db)
    kdf = json.loads(m("kdf", c.execute("SELECT value FROM vault_meta WHERE key='kdf'").fetchone()[0]))
    assert kdf["alg"] == "argon2id"
    salt = m("salt", base64.b64decode(kdf["salt"]))
    key = hash_secret_raw(passphrase.encode("utf-8"), salt, time_cost=kdf["t"], memory_cost=kdf["m_kib"],
                          parallelism=kdf["p"], hash_len=32, type=Type.ID)
    row = c.execute("SELECT name, scope, hosts, nonce, ciphertext, agents, disclosed FROM secrets WHERE name=?",
                    (name,)).fetchone()
    c.close()
    rname, scope, hosts, nonce, ct, agents, disclosed = (
        m("name", row[0]), m("scope", row[1]), m("hosts", row[2]), m("nonce", row[3]), m("ciphertext", row[4]),
        m("agents", row[5]), m("disclosed", row[6]))
    ad: dict = {"hosts": json.loads(hosts), "name": rname, "scope": json.loads(scope)}
    if agents is not None:      # format 2: the agents it is bound to and the owner's disclosure are bound too
        ad.update(agents=json.loads(agents), disclosed=bool(disclosed))
    aad = json.dumps(ad, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return AESGCM(key).decrypt(nonce, ct, aad)


@pytest.fixture(scope="module")
def vault_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fmt") / "vault.db"
    f = VaultFile(p)
    kb = keys.KeyBuffer()
    f.init(bytearray(PASS.encode()), kb)
    f.put(kb, "exchange key", VALUE.encode(), ["network.http_request"], ["api.example.com", "http://10.0.0.1:8080"],
          all_agents=True)
    f.put(kb, "other", b"x" * 40, ["process.run"], [], all_agents=True, disclose_to_agent=True)
    kb.close()
    f.close()
    return p


def test_independent_decrypt_roundtrip(vault_db: Path) -> None:
    assert independent_decrypt(vault_db, "exchange key", PASS) == VALUE.encode()
    assert independent_decrypt(vault_db, "other", PASS) == b"x" * 40


def test_file_and_meta_layout(vault_db: Path) -> None:
    assert vault_db.stat().st_mode & 0o777 == 0o600
    c = sqlite3.connect(vault_db)
    meta = dict(c.execute("SELECT key, value FROM vault_meta"))
    kdf = json.loads(meta["kdf"])
    assert list(kdf) == ["alg", "m_kib", "t", "p", "salt"]
    assert (kdf["alg"], kdf["m_kib"], kdf["t"], kdf["p"]) == ("argon2id", 65536, 3, 4)
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert isinstance(meta["verifier"], bytes) and len(meta["verifier"]) == 12 + len(F.VERIFIER_PLAINTEXT) + 16
    cols = [r[1] for r in c.execute("PRAGMA table_info(secrets)")]
    assert cols == ["name", "scope", "hosts", "nonce", "ciphertext", "created", "updated", "last_used", "agents",
                    "disclosed"]
    name, scope, hosts, nonce, ct = c.execute(
        "SELECT name, scope, hosts, nonce, ciphertext FROM secrets WHERE name='exchange key'").fetchone()
    assert json.loads(scope) == ["network.http_request"]
    assert json.loads(hosts) == ["api.example.com", "http://10.0.0.1:8080"]
    assert len(nonce) == 12 and len(ct) == len(VALUE.encode()) + 16
    # The verifier is a known plaintext sealed like a secret (name "", empty scope and hosts).
    key = hash_secret_raw(PASS.encode(), base64.b64decode(kdf["salt"]), 3, 65536, 4, 32, Type.ID)
    v = meta["verifier"]
    assert AESGCM(key).decrypt(v[:12], v[12:], b'{"hosts":[],"name":"","scope":[]}') == F.VERIFIER_PLAINTEXT


def _flip(b: bytes | str | int, i: int = 0) -> bytes | str | int:
    if isinstance(b, int):
        return 1 - b
    if isinstance(b, str):
        ch = b[i]
        return b[:i] + ("b" if ch != "b" else "c") + b[i + 1:]
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


@pytest.mark.parametrize("field,index", [
    ("nonce", 0), ("nonce", 11), ("ciphertext", 0), ("ciphertext", -1),   # -1: last byte of the tag
    ("name", 0), ("scope", 3), ("hosts", 3), ("salt", 5), ("agents", 2), ("disclosed", 0),
])
def test_one_byte_change_fails(vault_db: Path, field: str, index: int) -> None:
    def mutate(f: str, v):  # type: ignore[no-untyped-def]
        if f != field:
            return v
        i = index if index >= 0 else len(v) + index
        return _flip(v, i)

    with pytest.raises(InvalidTag):
        independent_decrypt(vault_db, "exchange key", PASS, mutate)


def test_tag_is_last_16_bytes(vault_db: Path) -> None:
    c = sqlite3.connect(vault_db)
    name, scope, hosts, nonce, ct = c.execute(
        "SELECT name, scope, hosts, nonce, ciphertext FROM secrets WHERE name='other'").fetchone()
    key = hash_secret_raw(PASS.encode(), F.parse_kdf(c.execute(
        "SELECT value FROM vault_meta WHERE key='kdf'").fetchone()[0]).salt, 3, 65536, 4, 32, Type.ID)
    aad = F.aad(name, json.loads(scope), json.loads(hosts))
    # Truncating the tag must fail (no short-tag acceptance).
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(nonce, ct[:-1], aad)


def test_wrong_passphrase_fails_independently(vault_db: Path) -> None:
    with pytest.raises(InvalidTag):
        independent_decrypt(vault_db, "exchange key", PASS + " ")


# -- pure helpers ------------------------------------------------------------------------------------
def test_aad_is_canonical_json() -> None:
    assert F.aad("n", ["b.c", "a.b"], []) == b'{"hosts":[],"name":"n","scope":["b.c","a.b"]}'
    assert F.aad("ключ", [], []) == b'{"hosts":[],"name":"\\u043a\\u043b\\u044e\\u0447","scope":[]}'


@pytest.mark.parametrize("raw", [
    None, "", "{}", "[]", '{"alg":"argon2i","m_kib":65536,"t":3,"p":4,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}',
    '{"alg":"argon2id","m_kib":99999999,"t":3,"p":4,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}',
    '{"alg":"argon2id","m_kib":65536,"t":0,"p":4,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}',
    '{"alg":"argon2id","m_kib":65536,"t":3,"p":4,"salt":"!!"}',
    '{"alg":"argon2id","m_kib":65536,"t":true,"p":4,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}',
    b"\xff\xfe",
])
def test_parse_kdf_rejects(raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StockadeError) as e:
        F.parse_kdf(raw)
    assert e.value.type == "VaultCorrupt"


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_parse_kdf_never_crashes(raw: bytes) -> None:
    try:
        F.parse_kdf(raw)
    except StockadeError as e:
        assert e.type == "VaultCorrupt"


@pytest.mark.parametrize("name", ["a", "exchange key", "ключ", "a\"b\\c", "emoji 🔑", "x" * 128, "$weird{"])
def test_odd_names_accepted(name: str) -> None:
    assert F.validate_name(name) == name


@pytest.mark.parametrize("name", ["", " a", "a ", "a}b", "a\nb", "\x00", "x" * 129, "\ud800", 3])
def test_bad_names_rejected(name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StockadeError) as e:
        F.validate_name(name)
    assert e.value.type == "InvalidInput"


def test_host_matching() -> None:
    hosts = F.normalize_hosts(["API.Example.com", "*.svc.example.org", "http://10.0.0.1:8080", "x.io:8443"])
    assert F.host_allowed(hosts, "https", "api.example.com", 443)
    assert F.host_allowed(hosts, "https", "api.example.com.", 8443)           # no port: any port
    assert not F.host_allowed(hosts, "http", "api.example.com", 80)           # https only unless stated
    assert not F.host_allowed(hosts, "https", "evilapi.example.com", 443)
    assert not F.host_allowed(hosts, "https", "api.example.com.evil.net", 443)
    assert F.host_allowed(hosts, "https", "a.svc.example.org", 443)
    assert not F.host_allowed(hosts, "https", "svc.example.org", 443)         # wildcard needs a label
    assert not F.host_allowed(hosts, "https", "evilsvc.example.org", 443)
    assert F.host_allowed(hosts, "http", "10.0.0.1", 8080)
    assert not F.host_allowed(hosts, "http", "10.0.0.1", 8081)
    assert not F.host_allowed(hosts, "https", "10.0.0.1", 8080)
    assert F.host_allowed(hosts, "https", "x.io", 8443) and not F.host_allowed(hosts, "https", "x.io", 443)


@pytest.mark.parametrize("bad", ["*", "*.com", "a/b", "user@host", "http://", "a b", "host:99999", "ex\\ample.com"])
def test_bad_hosts_rejected(bad: str) -> None:
    with pytest.raises(StockadeError):
        F.normalize_hosts([bad])


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-*:0123456789", max_size=30), st.text(max_size=30))
@settings(max_examples=300)
def test_host_allowed_only_exact_or_subdomain(entry: str, host: str) -> None:
    try:
        hosts = F.normalize_hosts([entry])
    except StockadeError:
        return
    if F.host_allowed(hosts, "https", host, 443):
        _s, h, _p = F.parse_host_entry(hosts[0])
        hn = host.lower().rstrip(".")
        assert hn == h or (h.startswith("*.") and hn.endswith(h[1:]) and len(hn) > len(h) - 1)
