"""Byte-exact helpers several parts need identically: canonical JSON and writing a whole buffer.

`canonical_json` is the one encoding for JSON that is hashed, signed or bound as associated data
(approval argument hashes, vault AAD, pack and release manifests, cost keys): keys sorted, no
whitespace, NaN/Infinity refused by default. Its flags are explicit per caller because the bytes
already stored (signatures, encrypted rows) must stay what they were: `ascii=True` is Python's
default `\\uXXXX` escaping, which the older formats were written with.

`write_all` loops over `os.write` until every byte is written (a pipe, a memfd or a file can take
less than asked), so no caller ships half a record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def canonical_json(obj: Any, *, ascii: bool = False, allow_nan: bool = False,
                   default: Callable[[Any], Any] | None = None) -> str:
    """Sorted keys, `,`/`:` separators; `ascii` escapes non-ASCII; NaN refused unless allowed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii, allow_nan=allow_nan,
                      default=default)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` to `fd` (short writes continue; errors propagate)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
