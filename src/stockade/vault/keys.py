"""The master key's home: one locked, non-dumpable, non-forked page, wiped with memset on seal.

Argon2id (argon2-cffi's low-level `argon2_hash`) writes the derived key straight into that page;
AES-GCM objects are built per operation and dropped at once (cryptography copies the key into
an OpenSSL context that is cleansed when freed). Plaintexts are decrypted into a bytearray that
is wiped after use. Python `str` copies handed to the pipeline cannot be wiped: that is the
hook's contract, and those copies live only for the duration of a call.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import resource
from typing import Any

from argon2.low_level import ARGON2_VERSION, Type, ffi, lib
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stockade.vault.format import KEY_LEN, NONCE_LEN, TAG_LEN, KdfParams

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def harden_process() -> dict[str, bool]:
    """No core dumps and no ptrace/proc-mem access by same-uid processes (the gateway only)."""
    out = {"core_dumps_off": False, "non_dumpable": False}
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        out["core_dumps_off"] = resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
    except (ValueError, OSError):
        pass
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        out["non_dumpable"] = _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    return out


class KeyBuffer:
    """A 32-byte key in its own anonymous page: mlock'ed, MADV_DONTDUMP, MADV_DONTFORK."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._arr = (ctypes.c_ubyte * mmap.PAGESIZE).from_buffer(self._map)
        self.addr = ctypes.addressof(self._arr)
        self.locked = _libc.mlock(ctypes.c_void_p(self.addr), ctypes.c_size_t(mmap.PAGESIZE)) == 0
        self.dontdump = self.dontfork = False
        for flag, attr in (("MADV_DONTDUMP", "dontdump"), ("MADV_DONTFORK", "dontfork")):
            if hasattr(mmap, flag):
                try:
                    self._map.madvise(getattr(mmap, flag))
                    setattr(self, attr, True)
                except OSError:
                    pass
        self.loaded = False
        self._pid = os.getpid()

    def view(self) -> memoryview:
        """The key bytes, as a view on the page (no copy)."""
        return memoryview(self._arr).cast("B")[:KEY_LEN]

    def wipe(self) -> None:
        self.loaded = False
        if os.getpid() != self._pid:
            return  # a forked child: MADV_DONTFORK left the page unmapped here, nothing to wipe
        ctypes.memset(self.addr, 0, mmap.PAGESIZE)

    def close(self) -> None:
        """Wipe, unlock, unmap."""
        if self._map.closed:
            return
        self.wipe()
        if os.getpid() != self._pid:
            return
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self.addr), ctypes.c_size_t(mmap.PAGESIZE))
        del self._arr
        self._map.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing else to do
            self.close()


def derive_into(passphrase: bytearray, kdf: KdfParams, out: KeyBuffer) -> None:
    """Argon2id(passphrase, salt, t, m_kib, p) -> out (32 bytes), without an intermediate bytes."""
    pwd = ffi.from_buffer("uint8_t[]", passphrase) if passphrase else ffi.new("uint8_t[]", 1)
    salt = ffi.new("uint8_t[]", kdf.salt)
    dst = ffi.cast("uint8_t *", out.addr)
    rv = lib.argon2_hash(kdf.t, kdf.m_kib, kdf.p, pwd, len(passphrase), salt, len(kdf.salt),
                         dst, KEY_LEN, ffi.NULL, 0, Type.ID.value, ARGON2_VERSION)
    if rv != lib.ARGON2_OK:
        out.wipe()
        raise RuntimeError(f"argon2id failed: {ffi.string(lib.argon2_error_message(rv)).decode()}")
    out.loaded = True


def wipe(buf: bytearray | Any) -> None:
    """Zero a bytearray in place (memset on its buffer)."""
    if isinstance(buf, bytearray) and buf:
        ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf))


def seal(key: KeyBuffer, plaintext: bytes | bytearray, aad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a fresh random 96-bit nonce -> (nonce, ciphertext||tag)."""
    nonce = os.urandom(NONCE_LEN)
    g = AESGCM(key.view())
    try:
        return nonce, g.encrypt(nonce, bytes(plaintext), aad)
    finally:
        del g


def open_into(key: KeyBuffer, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray | None:
    """Decrypt into a fresh bytearray (caller wipes it); None if authentication fails."""
    if len(nonce) != NONCE_LEN or len(ciphertext) < TAG_LEN:
        return None
    out = bytearray(len(ciphertext) - TAG_LEN)
    g = AESGCM(key.view())
    try:
        g.decrypt_into(nonce, ciphertext, aad, out)
    except InvalidTag:
        wipe(out)
        return None
    finally:
        del g
    return out
