"""Seal/unseal, wrong passphrase vs corruption, key memory, rekey crash-safety (kill -9)."""

from __future__ import annotations

import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.core.errors import StockadeError
from stockade.vault import keys
from stockade.vault.runtime import Vault
from stockade.vault.store import VaultFile

OLD, NEW = bytearray(b"old passphrase 1"), bytearray(b"new passphrase 2")


def make_vault(path: Path, n: int = 3, passphrase: bytearray = OLD) -> None:
    f = VaultFile(path)
    kb = keys.KeyBuffer()
    f.init(bytearray(passphrase), kb)
    for i in range(n):
        f.put(kb, f"s{i}", f"value-{i}-".encode() * 3, ["process.run"], [], all_agents=True, disclose_to_agent=True)
    kb.close()
    f.close()


def opens_with(path: Path, passphrase: bytearray) -> dict[str, bytes] | None:
    """All secrets under this passphrase, or None if the passphrase does not open the vault."""
    f = VaultFile(path)
    kb = keys.KeyBuffer()
    try:
        f.unlock(bytearray(passphrase), kb)
    except StockadeError as e:
        assert e.type == "WrongPassphrase", e
        return None
    finally:
        pass
    out = {}
    for r in f.rows():
        pt = f.decrypt(kb, r)
        out[r.name] = bytes(pt)
        keys.wipe(pt)
    kb.close()
    f.close()
    return out


def test_seal_unseal_cycle(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 1)
    v = Vault(p)
    assert v.sealed
    with pytest.raises(StockadeError) as e:
        v.key()
    assert e.value.type == "VaultSealed"
    v.unseal(bytearray(OLD))
    assert not v.sealed
    kb = v.key()
    assert kb.loaded and bytes(kb.view()) != bytes(32)
    assert v.seal() is True
    assert v.sealed and not kb.loaded
    with pytest.raises(StockadeError) as e:
        v.key()
    assert e.value.type == "VaultSealed"
    assert v.seal() is False


def test_wipe_zeroes_the_key_page(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 0)
    kb = keys.KeyBuffer()
    VaultFile(p).unlock(bytearray(OLD), kb)
    assert ctypes.string_at(kb.addr, 32) != bytes(32)
    kb.wipe()
    assert ctypes.string_at(kb.addr, 4096) == bytes(4096)
    kb.close()


def test_wrong_passphrase_is_distinguished_from_corruption(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 1)
    v = Vault(p)
    with pytest.raises(StockadeError) as e:
        v.unseal(bytearray(b"not it"))
    assert e.value.type == "WrongPassphrase" and v.sealed
    # Damage the verifier by one byte: the key-independent checksum says "corrupt", not "wrong".
    c = sqlite3.connect(p)
    ver = c.execute("SELECT value FROM vault_meta WHERE key='verifier'").fetchone()[0]
    c.execute("UPDATE vault_meta SET value=? WHERE key='verifier'", (ver[:20] + bytes([ver[20] ^ 1]) + ver[21:],))
    c.commit()
    with pytest.raises(StockadeError) as e:
        v.unseal(bytearray(OLD))
    assert e.value.type == "VaultCorrupt"
    c.execute("UPDATE vault_meta SET value=? WHERE key='verifier'", (ver,))
    kdf = c.execute("SELECT value FROM vault_meta WHERE key='kdf'").fetchone()[0]
    c.execute("UPDATE vault_meta SET value=? WHERE key='kdf'", (kdf.replace('"t": 3', '"t": 4'),))
    c.commit()
    with pytest.raises(StockadeError) as e:
        v.unseal(bytearray(OLD))
    assert e.value.type == "VaultCorrupt"
    c.execute("UPDATE vault_meta SET value=? WHERE key='kdf'", (kdf,))
    c.commit()
    v.unseal(bytearray(OLD))
    assert not v.sealed
    v.seal()


def test_corrupt_secret_row_is_reported_not_used(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 2)
    c = sqlite3.connect(p)
    ct = c.execute("SELECT ciphertext FROM secrets WHERE name='s0'").fetchone()[0]
    c.execute("UPDATE secrets SET ciphertext=? WHERE name='s0'", (bytes([ct[0] ^ 0x80]) + ct[1:],))
    c.execute("UPDATE secrets SET scope=? WHERE name='s1'", ('["process.run","network.http_request"]',))
    c.commit()
    f = VaultFile(p)
    kb = keys.KeyBuffer()
    f.unlock(bytearray(OLD), kb)
    for name in ("s0", "s1"):   # tampered ciphertext, and a row re-scoped behind our back
        with pytest.raises(StockadeError) as e:
            f.decrypt(kb, f.row(name))  # type: ignore[arg-type]
        assert e.value.type == "VaultCorrupt"
    kb.close()


def test_not_a_database(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    p.write_bytes(b"garbage" * 100)
    with pytest.raises(StockadeError) as e:
        Vault(p).unseal(bytearray(OLD))
    assert e.value.type == "VaultCorrupt"


def test_init_refuses_existing_and_is_0600(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 0)
    assert p.stat().st_mode & 0o777 == 0o600
    with pytest.raises(StockadeError) as e:
        VaultFile(p).init(bytearray(b"another"), keys.KeyBuffer())
    assert e.value.type == "VaultExists"
    assert opens_with(p, OLD) == {}


def test_fresh_nonce_on_every_write(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 0)
    f = VaultFile(p)
    kb = keys.KeyBuffer()
    f.unlock(bytearray(OLD), kb)
    nonces = set()
    for _ in range(20):
        nonces.add(f.put(kb, "same", b"same value", ["process.run"], [], all_agents=True, disclose_to_agent=True).nonce)
    assert len(nonces) == 20
    kb.close()


def test_put_rejects_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 1)
    f = VaultFile(p)
    kb = keys.KeyBuffer()
    f.unlock(bytearray(OLD), kb)
    before = [r.public() for r in f.rows()]
    for name, scope, hosts in [("a}", ["process.run"], []), ("ok", [], []), ("ok", ["not a cap"], []),
                               ("ok", ["network.http_request"], ["*"]), ("ok", ["network.http_request"], [])]:
        with pytest.raises(StockadeError) as e:
            f.put(kb, name, b"v", scope, hosts, all_agents=True)
        assert e.value.type == "InvalidInput"
    with pytest.raises(StockadeError):
        f.put(kb, "ok", b"v" * (64 * 1024 + 1), ["process.run"], [], all_agents=True, disclose_to_agent=True)
    with pytest.raises(StockadeError) as e:
        f.put(kb, "missing", b"v", None, None, keep_scope=True, must_exist=True)
    assert e.value.type == "SecretNotFound"
    assert [r.public() for r in f.rows()] == before
    kb.close()


def test_rekey_roundtrip_and_gateway_keeps_new_key(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 5)
    before = opens_with(p, OLD)
    v = Vault(p)
    v.unseal(bytearray(OLD))
    with pytest.raises(StockadeError) as e:
        v.rekey(bytearray(b"wrong"), bytearray(NEW))
    assert e.value.type == "WrongPassphrase"
    assert opens_with(p, OLD) == before
    assert v.rekey(bytearray(OLD), bytearray(NEW)) == 5
    assert opens_with(p, OLD) is None
    assert opens_with(p, NEW) == before
    assert not v.sealed and v.file.key_matches(v.key())   # still unsealed, with the new key
    v.seal()


def test_rekey_elsewhere_makes_stale_key_sealed_not_garbage(tmp_path: Path) -> None:
    from stockade.vault.store import Row  # noqa: F401

    p = tmp_path / "vault.db"
    make_vault(p, 1)
    v = Vault(p)
    v.unseal(bytearray(OLD))
    other = Vault(p)
    other.rekey(bytearray(OLD), bytearray(NEW))          # another process changed the passphrase
    with pytest.raises(StockadeError) as e:
        v._decrypt(v.key(), v.file.row("s0"))  # type: ignore[arg-type]
    assert e.value.type == "VaultSealed"
    v.seal()


def test_key_page_not_inherited_by_fork(tmp_path: Path) -> None:
    """A child forked after unseal does not even have the key page mapped (MADV_DONTFORK)."""
    p = tmp_path / "vault.db"
    make_vault(p, 0)
    v = Vault(p)
    v.unseal(bytearray(OLD))
    kb = v.key()
    assert kb.dontfork and kb.dontdump
    pid = os.fork()
    if pid == 0:  # child: touching the page must fault
        import faulthandler

        faulthandler.disable()
        try:
            data = ctypes.string_at(kb.addr, 32)
            os._exit(0 if data == bytes(32) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV, status
    # ...and a forked child that seals (or finalizes the buffer) does not crash on the missing page
    pid = os.fork()
    if pid == 0:
        try:
            v.seal()
            os._exit(0)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert not v.sealed   # the parent's key is untouched by the child
    v.seal()


def test_process_hardening_in_a_gateway_like_process() -> None:
    code = textwrap.dedent("""
        import resource, ctypes
        from stockade.vault.keys import harden_process
        r = harden_process()
        libc = ctypes.CDLL(None)
        print(r["core_dumps_off"], r["non_dumpable"], resource.getrlimit(resource.RLIMIT_CORE),
              libc.prctl(3, 0, 0, 0, 0))
        print(open("/proc/self/status").read().count("\\n") > 0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "True True (0, 0) 0"


REKEY_CHILD = textwrap.dedent("""
    import sys, time
    from stockade.vault import keys
    from stockade.vault.store import VaultFile
    path, old, new, pause_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    f = VaultFile(path)
    check, new_kb = keys.KeyBuffer(), keys.KeyBuffer()
    f.unlock(bytearray(old.encode()), check)
    def progress(done, total):
        if done == pause_at:
            print("PAUSED", flush=True)
            time.sleep(60)
    print("START", flush=True)
    f.rekey(check, bytearray(new.encode()), new_kb, progress)
    print("DONE", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("pause_at", [1, 20, 40])
def test_rekey_kill9_midway_leaves_old_vault(tmp_path: Path, pause_at: int) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 40)
    before = opens_with(p, OLD)
    proc = subprocess.Popen([sys.executable, "-c", REKEY_CHILD, str(p), OLD.decode(), NEW.decode(), str(pause_at)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == "PAUSED":
            break
    assert lines[-1] == "PAUSED", lines
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert opens_with(p, OLD) == before        # all secrets decrypt under the old passphrase
    assert opens_with(p, NEW) is None          # and none of the new state leaked in


def test_rekey_kill9_after_commit_leaves_new_vault(tmp_path: Path) -> None:
    p = tmp_path / "vault.db"
    make_vault(p, 10)
    before = opens_with(p, OLD)
    proc = subprocess.Popen([sys.executable, "-c", REKEY_CHILD, str(p), OLD.decode(), NEW.decode(), "-1"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "DONE":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert opens_with(p, NEW) == before
    assert opens_with(p, OLD) is None


def test_rekey_kill9_at_random_instants_exactly_one_passphrase(tmp_path: Path) -> None:
    """Kill at arbitrary points (including inside COMMIT): exactly one passphrase opens it, fully."""
    import random

    p = tmp_path / "vault.db"
    make_vault(p, 150)
    expected = opens_with(p, OLD)
    current, other = OLD, NEW
    rng = random.Random(os.getpid())
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", REKEY_CHILD, str(p), current.decode(), other.decode(), "-1"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "START"
        time.sleep(rng.uniform(0.0, 0.6))     # derivation (~0.2-0.5 s) then the transaction
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        a, b = opens_with(p, current), opens_with(p, other)
        assert (a is None) != (b is None), "exactly one passphrase must open the vault"
        assert (a or b) == expected
        if a is None:
            current, other = other, current


_FUZZ_SRC: dict[str, Any] = {}


def _fuzz_source(tmp: Path) -> tuple[bytes, dict[str, bytes]]:
    if not _FUZZ_SRC:
        p = tmp / "src-vault.db"
        make_vault(p, 4)
        _FUZZ_SRC["raw"] = p.read_bytes()
        _FUZZ_SRC["values"] = opens_with(p, OLD)
    return _FUZZ_SRC["raw"], _FUZZ_SRC["values"]


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=3))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tampered_file_never_yields_a_wrong_value(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    """Random byte flips anywhere in vault.db: a structured error or the true values, never others."""
    raw, values = _fuzz_source(tmp_path)
    data = bytearray(raw)
    for off, x in flips:
        data[off % len(data)] ^= x
    p = tmp_path / f"t{os.getpid()}-{time.monotonic_ns()}.db"
    p.write_bytes(bytes(data))
    v = Vault(p)
    try:
        v.unseal(bytearray(OLD))
        for r in v.file.rows():
            try:
                pt = v.file.decrypt(v.key(), r)
            except StockadeError as e:
                assert e.type == "VaultCorrupt"
                continue
            assert values.get(r.name) == bytes(pt), r.name
    except StockadeError as e:
        assert e.type in ("VaultCorrupt", "WrongPassphrase", "VaultNotInitialized"), e
    finally:
        v.seal()
        v.file.close()
        p.unlink()
