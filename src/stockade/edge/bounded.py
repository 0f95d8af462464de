"""The one bounded JSON parse every transport uses for what an agent (or a browser) sends.

Every part behind the edge may assume what this guarantees, so none of them has to re-check:
- nesting at most `MAX_JSON_DEPTH` (the audit writer's record depth and the reader's decoder
  limit are derived from it; a gap between them let an agent poison the log);
- no string longer than `MAX_STRING_BYTES`, no array or object with more than
  `MAX_CONTAINER_ITEMS` members;
- only finite numbers: `NaN`, `Infinity`, `-Infinity` and literals that overflow to infinity
  (`1e999`) are refused; so are integers longer than Python's digit limit;
- strings are valid Unicode: UTF-8 only, and no lone surrogate (`"\\ud800"`), which breaks every
  encoder downstream.

Pure, and cheap on the common case: the standard C decoder does the parse (non-finite numbers are
caught by its hooks as it goes); the walk over the result that checks depth, sizes and surrogates
runs only when a few `count`s over the text show a bound could be reached at all.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from stockade.core.errors import StockadeError, err
from stockade.core.limits import MAX_CONTAINER_ITEMS, MAX_JSON_DEPTH, MAX_STRING_BYTES

# A JSON escape that decodes to a UTF-16 surrogate (paired ones are joined by the decoder; what
# is left after decoding is a lone surrogate).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise _NonFinite(text)
    return f


def parse_json(body: bytes | str) -> Any:
    """The document in `body`, or StockadeError: `ParseError` (not JSON) or `InvalidInput`."""
    if isinstance(body, bytes | bytearray):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise err("ParseError", "parse error: the body is not UTF-8 text") from None
    else:
        text = body
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except _NonFinite as e:
        raise err("InvalidInput", f"non-finite number {str(e)[:40]!r}: only finite numbers are accepted",
                  reason="non-finite") from None
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as e:
        raise err("ParseError", f"parse error: {e.msg} at position {e.pos}") from None
    except ValueError as e:   # an integer beyond Python's digit limit
        raise err("InvalidInput", f"number too large: {str(e)[:80]}", reason="size") from None
    if _could_exceed(text):
        check(doc)
    return doc


def _could_exceed(text: str) -> bool:
    """Cheap over-approximation: False only when no bound can possibly be reached."""
    return (text.count("[") + text.count("{") > MAX_JSON_DEPTH
            or len(text) > MAX_STRING_BYTES // 4
            or text.count(",") >= MAX_CONTAINER_ITEMS
            or _SURROGATE_ESCAPE.search(text) is not None)


def check(doc: Any) -> None:
    """Raise InvalidInput unless `doc` is within the edge's bounds. Iterative: any depth is safe."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            if len(v) > MAX_CONTAINER_ITEMS:
                raise err("InvalidInput", f"more than {MAX_CONTAINER_ITEMS} members in one array or object",
                          reason="size")
            if isinstance(v, dict):
                for k, x in v.items():
                    _check_str(k)
                    stack.append((x, depth))
            else:
                stack.extend((x, depth) for x in v)
        elif isinstance(v, str):
            _check_str(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise err("InvalidInput", "non-finite number: only finite numbers are accepted", reason="non-finite")


def _check_str(s: Any) -> None:
    if not isinstance(s, str):
        return
    if len(s) > MAX_STRING_BYTES // 4 and len(s.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
        raise err("InvalidInput", f"a string is longer than {MAX_STRING_BYTES} bytes", reason="size")
    if not s.isascii() and _LONE_SURROGATE.search(s):
        raise err("InvalidInput", "a string holds a lone UTF-16 surrogate (not valid Unicode)", reason="encoding")


def _too_deep() -> StockadeError:
    return err("InvalidInput", f"nested deeper than {MAX_JSON_DEPTH} levels", reason="depth")
