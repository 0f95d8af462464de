"""A small ctypes shim over Debian's libnftables.so.1 (JSON API), plus netns-scoped runs.

Why ctypes: the venv's Python is not Debian's, so `python3-nftables` is not importable; the C
API we need is five functions. Why JSON: rules are built as data (no string templating of
addresses into nft syntax), and a whole ruleset is one atomic transaction.

`run_in_netns(path, cmds)` runs a batch inside a network namespace from a short-lived thread
that setns()'s into it (setns(CLONE_NEWNET) only affects the calling thread; netlink sockets
belong to the namespace they were created in, so the context is created in that thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from typing import Any

from stockade.errors import err

NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_HANDLE = 1 << 3
CLONE_NEWNET = 0x40000000

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
    return _lib


def available() -> tuple[bool, str]:
    try:
        _load()
        return True, "libnftables.so.1"
    except OSError as e:
        return False, str(e)


class Nft:
    """One libnftables context (JSON in, JSON out). Not thread-safe; one per thread."""

    def __init__(self) -> None:
        self.lib = _load()
        self.ctx = self.lib.nft_ctx_new(0)
        if not self.ctx:
            raise err("Internal", "nft_ctx_new failed")
        self.lib.nft_ctx_output_set_flags(self.ctx, NFT_CTX_OUTPUT_JSON)
        self.lib.nft_ctx_buffer_output(self.ctx)
        self.lib.nft_ctx_buffer_error(self.ctx)

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cmd(self, command: str | dict[str, Any] | list[dict[str, Any]]) -> Any:
        """Run a command (nft syntax string, or JSON `{"nftables": [...]}` / a list of commands).

        Returns the parsed JSON output (or None when there is none); raises NftError on failure.
        """
        if isinstance(command, list):
            command = {"nftables": command}
        text = command if isinstance(command, str) else json.dumps(command)
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        errb = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        if rc != 0:
            raise NftError(errb.decode(errors="replace").strip() or f"nft failed (rc={rc})")
        out_s = out.decode(errors="replace").strip()
        return json.loads(out_s) if out_s else None


class NftError(Exception):
    pass


def run_in_netns(netns_path: str | None, commands: list[Any]) -> list[Any]:
    """Run each command with a fresh context inside `netns_path` (None = the caller's netns)."""
    if netns_path is None:
        with Nft() as n:
            return [n.cmd(c) for c in commands]
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
            with Nft() as n:
                result["out"] = [n.cmd(c) for c in commands]
        except BaseException as e:  # handed to the caller's thread
            result["err"] = e

    t = threading.Thread(target=work, name="nft-netns", daemon=True)
    t.start()
    t.join()
    if "err" in result:
        raise result["err"]
    return result["out"]
