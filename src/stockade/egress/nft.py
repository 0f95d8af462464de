"""nftables for egress: the perimeter part's libnftables ctypes shim, run inside a namespace.

The JSON-API shim itself lives in `stockade.perimeter.nft` (one ctypes binding for the project);
this module adds what egress needs on top: `run_in_netns(path, batches)` runs JSON batches inside
an agent's network namespace from a short-lived thread that setns()'s into it. setns(CLONE_NEWNET)
only affects the calling thread, and netlink sockets belong to the namespace they were created in,
so the libnftables context is created (and freed) in that thread. Each batch is one atomic
transaction.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from stockade.perimeter.nft import Nft, NftError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

__all__ = ["Nft", "NftError", "available", "list_table", "run_in_netns"]


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
