"""nftables through libnftables' JSON API (the project's one binding), run inside a namespace.

`Nft` is the ctypes shim (the perimeter uses it too: it sits above egress). On top of it,
`run_in_netns(path, batches)` runs JSON batches inside an agent's network namespace from a
short-lived thread that setns()'s into it. setns(CLONE_NEWNET) only affects the calling thread,
and netlink sockets belong to the namespace they were created in, so the libnftables context is
created (and freed) in that thread. Each batch is one atomic transaction.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    pass


class Nft:
    """One libnftables context. Calls are serialized (the context is not thread-safe)."""

    def __init__(self, lib: str = "libnftables.so.1"):
        self._lib = ctypes.CDLL(lib, use_errno=True)
        L = self._lib  # noqa: N806
        L.nft_ctx_new.restype = ctypes.c_void_p
        L.nft_ctx_new.argtypes = [ctypes.c_uint32]
        L.nft_ctx_free.argtypes = [ctypes.c_void_p]
        L.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        L.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        L.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        L.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        L.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        L.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        L.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        L.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._ctx = L.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        L.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON)
        L.nft_ctx_buffer_output(self._ctx)
        L.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Run a JSON batch (one transaction); returns the parsed JSON output, if any."""
        payload = json.dumps({"nftables": commands}).encode()
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, payload)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            errs = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(errs.decode(errors="replace").strip() or f"nft failed ({rc})")
        return json.loads(out) if out.strip() else {}

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None



def available() -> tuple[bool, str]:
    try:
        Nft().close()
        return True, "libnftables.so.1"
    except (OSError, NftError) as e:
        return False, str(e)


def list_table(table: str, family: str = "inet") -> list[dict[str, Any]]:
    """A batch listing one table (NftError if it does not exist)."""
    return [{"list": {"table": {"family": family, "name": table}}}]


def _run(batches: list[list[dict[str, Any]]]) -> list[Any]:
    n = Nft()
    try:
        return [n.run(b) for b in batches]
    finally:
        n.close()


def run_in_netns(netns_path: str | None, batches: list[list[dict[str, Any]]]) -> list[Any]:
    """Run each JSON batch with a fresh context inside `netns_path` (None = the caller's netns)."""
    if netns_path is None:
        return _run(batches)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({netns_path}): {os.strerror(e)}")
            finally:
                os.close(fd)
            result["out"] = _run(batches)
        except BaseException as e:  # handed to the caller's thread
            result["err"] = e

    t = threading.Thread(target=work, name="nft-netns", daemon=True)
    t.start()
    t.join()
    if "err" in result:
        raise result["err"]
    return result["out"]
