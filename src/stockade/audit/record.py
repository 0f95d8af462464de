"""The audit record format of docs/design.md "Formats", as pure functions over bytes.

A day file is a sequence of frames: 4-byte big-endian length N, then N bytes of deterministic
CBOR (RFC 8949 §4.2.1 core deterministic encoding: shortest heads, definite lengths, map keys
sorted by their encoded bytes, shortest floats). A record is a map with text keys; the writer
adds `seq`, `ts` (µs), `prev` and `hash = SHA-256(prev || CBOR(record without "hash"))`.

Speed matters here (the verifier must check hundreds of thousands of records a second), so the
canonical check avoids re-encoding where it can prove the bytes canonical more cheaply: for
records made only of text/bytes/ints/bools/null/arrays/maps, a canonical encoding is the unique
shortest one with sorted keys, so "keys sorted at every level and length == canonical length"
proves it. Anything else (floats, tags, big integers) takes the slow path: re-encode and compare.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import struct
import time
from typing import Any

import cbor2

from stockade.core.limits import MAX_RECORD_DEPTH, REFUSED_ARGS_PREFIX_BYTES

try:   # the optional C twin of `_build_fast` and of the verifier's common case (_native.c, built by make)
    _native_mod: Any = importlib.import_module("stockade.audit._native")
except ImportError:      # not built: the Python paths give the same results, only slower
    _native_mod = None
# STOCKADE_AUDIT_NATIVE=0 turns it off (to compare the two paths in bench audit).
NATIVE: Any = None if os.environ.get("STOCKADE_AUDIT_NATIVE") == "0" else _native_mod

ZERO_HASH = bytes(32)
FRAME = struct.Struct(">I")
MAX_RECORD = 1 << 20          # the writer never produces a larger record
MAX_FRAME = 16 << 20          # the reader treats larger lengths as garbage
MAX_ARGS = 256 << 10          # bigger argument maps are replaced by a digest
RESERVED = ("seq", "ts", "prev", "hash")
_HASH_ENTRY = b"\x64hash\x58\x20"   # text(4) "hash", bytes(32) header
_INT_RANGE = range(-(1 << 64), 1 << 64)   # CBOR major types 0/1; beyond needs tags (bignums)


class BadRecord(Exception):
    """A frame that is not a valid record; `cause` is one of the verifier's cause codes."""

    def __init__(self, cause: str, detail: str):
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


# -- encoding -----------------------------------------------------------------------------------
def _sort_key(k: str) -> tuple[int, bytes]:
    b = k.encode("utf-8", "surrogatepass")
    return (len(b), b)


class _Unrecordable(Exception):
    """A value the log will not hold as-is (the reader could not give it back); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def normalize(value: Any, _depth: int = 2) -> Any:
    """A CBOR-safe copy: text keys in canonical order; unknown types become their text form.

    Why: records come from JSON (agent arguments) and from parts (events); the log must accept
    any of it without the encoder failing or choosing a non-deterministic form (tags, sets).
    Raises _Unrecordable for what no reader could give back faithfully: nesting deeper than
    `MAX_RECORD_DEPTH` (`_depth` is the level this value's container would sit at; the record map
    is level 1), non-finite numbers, integers beyond 64 bits, keys that collide once made text.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value not in _INT_RANGE:
            raise _Unrecordable("an integer beyond 64 bits")
        return int(value)
    if isinstance(value, float):
        if value != value or value in (math.inf, -math.inf):
            raise _Unrecordable("a non-finite number (NaN or Infinity)")
        return float(value)
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if _depth > MAX_RECORD_DEPTH:
        raise _Unrecordable("arguments too deep to record")
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for k, v in value.items():
            key = (k if isinstance(k, str) else str(k)).encode("utf-8", "replace").decode("utf-8")
            if key in items:
                raise _Unrecordable("map keys that collide once made text")
            items[key] = normalize(v, _depth + 1)
        return dict(sorted(items.items(), key=lambda kv: _sort_key(kv[0])))
    if isinstance(value, list | tuple | set | frozenset):
        seq = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [normalize(v, _depth + 1) for v in seq]
    return str(value)


def _leaf_text(x: Any) -> str:
    if isinstance(x, str):
        return json.dumps(x)
    if isinstance(x, bool) or x is None:
        return json.dumps(x)
    if isinstance(x, int):
        return str(x) if x.bit_length() < 4000 else hex(x)
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, bytes | bytearray | memoryview):
        return "h'" + bytes(x).hex() + "'"
    return json.dumps(str(x))


_STAND_IN_MAX_STEPS = 4_000_000


def stand_in(value: Any, note: str) -> dict[str, Any]:
    """A bounded, decodable record of `value`: a note, a SHA-256 and a prefix of its text form.

    Iterative (values can be far deeper than the interpreter's stack) and bounded in work, so
    whatever reaches the writer is recorded as something (never dropped, never written as-is).
    """
    h = hashlib.sha256()
    total, prefix, plen, steps = 0, [], 0, 0
    ops: list[tuple[bool, Any]] = [(False, value)]
    while ops and steps < _STAND_IN_MAX_STEPS:
        steps += 1
        is_text, x = ops.pop()
        if is_text:
            piece = x
        elif isinstance(x, dict | list | tuple | set | frozenset):
            pairs = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
            ops.append((True, "}" if isinstance(x, dict) else "]"))
            for i in range(len(pairs) - 1, -1, -1):
                k, v = pairs[i]
                ops.append((False, v))
                if k is not None or isinstance(x, dict):
                    ops.append((True, _leaf_text(k) + ":"))
                if i:
                    ops.append((True, ","))
            piece = "{" if isinstance(x, dict) else "["
        else:
            piece = _leaf_text(x)
        b = piece.encode("utf-8", "backslashreplace")
        h.update(b)
        total += len(b)
        if plen < REFUSED_ARGS_PREFIX_BYTES:
            prefix.append(piece)
            plen += len(piece)
    out = {"_unrecorded": note, "sha256": h.hexdigest(), "bytes": total,
           "prefix": "".join(prefix)[:REFUSED_ARGS_PREFIX_BYTES].encode("utf-8", "replace").decode("utf-8")}
    if ops:
        out["partial"] = True      # the digest covers the first `bytes` only (a cyclic or enormous value)
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[0])))   # canonical order: any encoder


class _Exotic(Exception):
    pass


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _order(keys: tuple[str, ...]) -> tuple[str, ...]:
    o = _ORDERS.get(keys)
    if o is None:
        o = tuple(sorted(keys, key=_sort_key))
        if len(_ORDERS) < 4096:
            _ORDERS[keys] = o
    return o


_SPLITS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _split(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Canonically ordered keys that sort before "hash", and those after."""
    s = _SPLITS.get(keys)
    if s is None:
        order = _order(keys)
        s = (tuple(k for k in order if _sort_key(k) < (4, b"hash")),
             tuple(k for k in order if _sort_key(k) > (4, b"hash")))
        if len(_SPLITS) < 4096:
            _SPLITS[keys] = s
    return s


_LEAF = (str, bool, bytes, type(None))


def _prep(v: Any, d: int = 2) -> Any:
    """Fast path of `normalize` for JSON-like data: a key-sorted copy, or _Exotic.

    `d` is the level the container `v` sits at (the record map is 1): deeper than
    MAX_RECORD_DEPTH is _Exotic, and `normalize` then says why.
    """
    t = type(v)
    if d > MAX_RECORD_DEPTH and (t is dict or t is list or t is tuple):
        raise _Exotic
    if t is dict:
        keys = tuple(v)
        order = _ORDERS.get(keys)
        if order is None:
            for k in keys:
                if type(k) is not str or not k.isascii():
                    raise _Exotic
            order = _order(keys)
        out = {}
        for k in order:
            x = v[k]
            tx = type(x)
            if tx in _LEAF or (tx is int and -0x10000000000000000 <= x < 0x10000000000000000):
                out[k] = x
            else:
                out[k] = _prep(x, d + 1)
        return out
    if t in _LEAF:
        return v
    if t is int:
        if -0x10000000000000000 <= v < 0x10000000000000000:
            return v
        raise _Exotic
    if t is list or t is tuple:
        return [_prep(x, d + 1) for x in v]
    raise _Exotic


def _entries(d: dict[str, Any], plain: bool) -> bytes:
    """The encoded key/value pairs of a map, without its head."""
    if not d:
        return b""
    raw = cbor2.dumps(d) if plain else cbor2.dumps(d, canonical=True)
    return raw[_head(len(d)):]


def build(fields: dict[str, Any], seq: int, ts: int, prev: bytes) -> tuple[bytes, bytes]:
    """Encode one record: returns (body, hash). Chain keys in `fields` are ignored.

    One encoding pass: the map is encoded as the entries sorting before "hash" and those after,
    hashed without the hash entry, then the hash entry is spliced in between.
    """
    fast = _build_fast(fields, seq, ts, prev)
    if fast is not None:
        return fast
    rec, plain = _body(fields, exact=True)
    rec["seq"], rec["ts"], rec["prev"] = int(seq), int(ts), bytes(prev)
    try:
        body, digest = _splice(rec, prev, plain)
    except Exception:
        # e.g. a lone surrogate in a string: normalize replaces what cbor2 cannot encode.
        rec, plain = _body(fields, exact=False)
        rec["seq"], rec["ts"], rec["prev"] = int(seq), int(ts), bytes(prev)
        body, digest = _splice(rec, prev, plain)
    if len(body) > MAX_ARGS and "args" in rec:
        raw = cbor2.dumps(rec["args"], canonical=True)
        rec["args"] = normalize({"_truncated": True, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        body, digest = _splice(rec, prev, plain)
    while len(body) > MAX_RECORD:
        # Too large even so: the largest field becomes a stand-in (never refused, never dropped).
        sizes = {k: len(cbor2.dumps(v, canonical=True)) for k, v in rec.items() if k not in RESERVED}
        big = max(sizes, key=lambda k: sizes[k], default=None)
        if big is None or sizes[big] < 4 * REFUSED_ARGS_PREFIX_BYTES:
            raise ValueError(f"audit record of {len(body)} bytes exceeds {MAX_RECORD}")
        rec[big] = stand_in(rec[big], "a value too large to record")
        body, digest = _splice(rec, prev, plain)
    return body, digest


def _body(fields: dict[str, Any], *, exact: bool) -> tuple[dict[str, Any], bool]:
    """The record's own fields made encodable, field by field: (fields, plain).

    `exact`: JSON-like fields are copied as they are (`plain` stays True: cbor2's default
    encoding is canonical for them); others are normalized, and a field past the limits
    (`_Unrecordable`) becomes a stand-in, so the rest of the record stays exact.
    """
    out: dict[str, Any] = {}
    plain = exact
    for k, v in fields.items():
        if k in RESERVED:
            continue
        key = (k if isinstance(k, str) else str(k)).encode("utf-8", "replace").decode("utf-8")
        if key in RESERVED or key in out:
            continue
        try:
            if not exact:
                raise _Exotic
            out[key] = _prep(v)
        except _Exotic:
            plain = False
            try:
                out[key] = normalize(v)
            except _Unrecordable as e:
                out[key] = stand_in(v, e.reason)
    return out, plain


_PLACEHOLDER = _HASH_ENTRY + os.urandom(32)   # unguessable: callers cannot plant it in their args
_CHAIN_KEYS = frozenset(RESERVED)
_TOP_ORDERS: dict[tuple[Any, ...], tuple[str, ...] | None] = {}


def _top_order(fields: dict[str, Any]) -> tuple[str, ...] | None:
    """The record's top-level keys (chain keys included) in canonical order; None unless all ASCII text."""
    keys = tuple(fields)
    order = _TOP_ORDERS.get(keys, ())
    if order == ():
        order = None
        if all(type(k) is str and k.isascii() for k in keys):
            order = _order(tuple(k for k in keys if k not in _CHAIN_KEYS) + RESERVED)
        if len(_TOP_ORDERS) < 4096:
            _TOP_ORDERS[keys] = order
    return order


def build_frame(fields: dict[str, Any], seq: int, ts: int, prev: bytes) -> tuple[bytes, bytes]:
    """`build`, framed: (frame, hash). The writer's per-record call, so the common record takes
    the native encoder (one C call: encode, hash, frame) when it is built."""
    native = NATIVE
    if native is not None:     # (it declines seq, ts, prev of other types than int, int, bytes itself)
        order = _TOP_ORDERS.get(tuple(fields), ())
        if order == ():
            order = _top_order(fields)
        if order is not None:
            out: tuple[bytes, bytes] | None = native.build(fields, order, seq, ts, prev, MAX_RECORD_DEPTH, MAX_ARGS)
            if out is not None:
                return out
    body, digest = build(fields, seq, ts, prev)
    return frame(body), digest


def _build_fast(fields: dict[str, Any], seq: int, ts: int, prev: bytes) -> tuple[bytes, bytes] | None:
    """`build` for the common case (ASCII keys, JSON-like values) in one pass; None otherwise."""
    order = _top_order(fields)
    if order is None or type(seq) is not int or type(ts) is not int or type(prev) is not bytes:
        return None
    out: dict[str, Any] = {}
    try:
        for k in order:
            if k in _CHAIN_KEYS:
                out[k] = seq if k == "seq" else ts if k == "ts" else prev if k == "prev" else _PLACEHOLDER[7:]
                continue
            x = fields[k]
            tx = type(x)
            out[k] = x if tx in _LEAF or (tx is int and -0x10000000000000000 <= x < 0x10000000000000000) \
                else _prep(x)
        full = cbor2.dumps(out)
    except Exception:
        return None
    i = full.find(_PLACEHOLDER)
    if i <= 0 or full.find(_PLACEHOLDER, i + 1) >= 0 or len(full) > MAX_ARGS:
        return None
    n = len(out) - 1
    h = hashlib.sha256(prev)
    h.update(_map_head(n))
    h.update(full[_head(n + 1):i])
    h.update(full[i + 39:])
    digest = h.digest()
    return full[:i + 7] + digest + full[i + 39:], digest


def _splice(rec: dict[str, Any], prev: bytes, plain: bool) -> tuple[bytes, bytes]:
    """Encode once with a placeholder hash entry, hash the bytes without it, fill it in."""
    if plain:
        rec["hash"] = _PLACEHOLDER[7:]
        order = _order(tuple(rec))
        try:
            full = cbor2.dumps({k: rec[k] for k in order})
        except Exception:
            full = b""
        finally:
            del rec["hash"]
        i = full.find(_PLACEHOLDER)
        if i > 0 and full.find(_PLACEHOLDER, i + 1) < 0:
            n = len(rec)
            hl = _head(n + 1)
            digest = hashlib.sha256(prev + _map_head(n) + full[hl:i] + full[i + 39:]).digest()
            return full[:i + 7] + digest + full[i + 39:], digest
    return _splice_slow(rec, prev, plain)


def _splice_slow(rec: dict[str, Any], prev: bytes, plain: bool) -> tuple[bytes, bytes]:
    pre_keys, post_keys = _split(tuple(rec))
    pre = {k: rec[k] for k in pre_keys}
    post = {k: rec[k] for k in post_keys}
    a, b = _entries(pre, plain), _entries(post, plain)
    n = len(rec)
    digest = hashlib.sha256(prev + _map_head(n) + a + b).digest()
    return _map_head(n + 1) + a + _HASH_ENTRY + digest + b, digest


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


def now_us() -> int:
    return time.time_ns() // 1000


_DAY_CACHE: tuple[int, str] = (-1, "")


def day_of(ts_us: int) -> str:
    """The UTC day (YYYY-MM-DD) a timestamp belongs to (cached per second: called per record)."""
    global _DAY_CACHE
    sec = ts_us // 1_000_000
    cached = _DAY_CACHE       # one tuple, swapped atomically: safe from the writer's threads too
    if cached[0] == sec:
        return cached[1]
    day = time.strftime("%Y-%m-%d", time.gmtime(sec))
    _DAY_CACHE = (sec, day)
    return day


# -- canonical length (the fast canonical check) ------------------------------------------------
def _head(n: int) -> int:
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


_KEYS_OK: dict[tuple[Any, ...], int] = {}


def _keys_length(keys: tuple[Any, ...]) -> int:
    """Encoded size of a map's keys if they are ASCII text in canonical order, else -1."""
    total, ll, lk = 0, -1, ""
    for k in keys:
        if type(k) is not str or not k.isascii():
            return -1
        kl = len(k)
        if kl < ll or (kl == ll and k <= lk):
            return -1
        ll, lk = kl, k
        total += kl + _head(kl)
    return total


def canonical_length(o: Any) -> int:
    """Length of the canonical encoding of `o`, or -1 if `o` needs the slow path.

    -1 for: floats (several same-length encodings of NaN), integers beyond 64 bits (tags),
    non-ASCII or non-text map keys, keys not in canonical order, and any other type. Written
    for speed (key sets are checked once and cached, leaves inline): it runs once per record in
    `verify`.
    """
    t = type(o)
    if t is dict:
        keys = tuple(o)
        total = _KEYS_OK.get(keys)
        if total is None:
            total = _keys_length(keys)
            if total < 0:
                return -1
            if len(_KEYS_OK) < 4096:
                _KEYS_OK[keys] = total
        n = len(o)
        total += 1 if n < 24 else _head(n)
        for v in o.values():
            tv = type(v)
            if tv is str:
                n = len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass"))
                total += n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
            elif tv is int:
                m = v if v >= 0 else -1 - v
                if m < 24:
                    total += 1
                elif m < 0x10000000000000000:
                    total += 2 if m < 0x100 else 3 if m < 0x10000 else 5 if m < 0x100000000 else 9
                else:
                    return -1
            elif tv is bytes:
                n = len(v)
                total += n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
            else:
                vl = canonical_length(v)
                if vl < 0:
                    return -1
                total += vl
        return total
    if t is str:
        n = len(o) if o.isascii() else len(o.encode("utf-8", "surrogatepass"))
        return _head(n) + n
    if t is int:
        m = o if o >= 0 else -1 - o
        return _head(m) if m < 0x10000000000000000 else -1
    if t is bytes:
        return _head(len(o)) + len(o)
    if t is list:
        total = _head(len(o))
        for v in o:
            vl = canonical_length(v)
            if vl < 0:
                return -1
            total += vl
        return total
    if t is bool or o is None:
        return 1
    return -1


_SMALL_MAP_HEADS = [bytes([0xA0 + i]) for i in range(24)]


def _map_head(n: int) -> bytes:
    if n < 24:
        return bytes([0xA0 + n])
    if n < 0x100:
        return bytes([0xB8, n])
    if n < 0x10000:
        return b"\xb9" + n.to_bytes(2, "big")
    return b"\xba" + n.to_bytes(4, "big")


# -- decoding and checking ------------------------------------------------------------------------
def check_fast(body: bytes) -> dict[str, Any] | None:
    """The record if `body` is provably canonical, well-typed and its own hash matches; else None.

    None means "take the slow path" (`check`), which names the exact cause.
    """
    try:
        rec = cbor2.loads(body)
    except Exception:
        return None
    if type(rec) is not dict or canonical_length(rec) != len(body):
        return None
    seq, ts, prev, digest = rec.get("seq"), rec.get("ts"), rec.get("prev"), rec.get("hash")
    if (type(seq) is not int or seq < 1 or type(ts) is not int or type(prev) is not bytes or len(prev) != 32
            or type(digest) is not bytes or len(digest) != 32):
        return None
    entry = _HASH_ENTRY + digest
    i = body.find(entry)
    if i < 0 or body.find(entry, i + 1) >= 0:
        return None
    n = len(rec)
    h = hashlib.sha256(prev)
    if n < 24:
        h.update(_SMALL_MAP_HEADS[n - 1])
        h.update(body[1:i])
    else:
        h.update(_map_head(n - 1))
        h.update(body[_head(n):i])
    h.update(body[i + 39:])
    if h.digest() != digest:
        return None
    return rec


def decode(body: bytes) -> Any:
    """Decode exactly one CBOR item filling `body`; BadRecord("malformed") otherwise."""
    import io

    fp = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except RecursionError:
        raise BadRecord("malformed", "CBOR nested too deeply") from None
    except Exception as e:
        raise BadRecord("malformed", f"not valid CBOR ({str(e)[:120]})") from None
    if fp.tell() != len(body):
        raise BadRecord("malformed", f"{len(body) - fp.tell()} bytes after the CBOR item "
                                     "(length prefix corrupted?)")
    return value


def check(body: bytes) -> dict[str, Any]:
    """Full check of one record's bytes (slow path); raises BadRecord with the precise cause.

    Order: malformed CBOR, not a record (types), non-canonical encoding, hash mismatch.
    """
    rec = decode(body)
    if type(rec) is not dict:
        raise BadRecord("bad_record", f"a record must be a CBOR map, found {type(rec).__name__}")
    for k in rec:
        if type(k) is not str:
            raise BadRecord("bad_record", f"map key {k!r} is not text")
    seq, ts, prev, digest = rec.get("seq"), rec.get("ts"), rec.get("prev"), rec.get("hash")
    if type(seq) is not int or seq < 1:
        raise BadRecord("bad_record", "missing or invalid seq")
    if type(ts) is not int:
        raise BadRecord("bad_record", "missing or invalid ts")
    if type(prev) is not bytes or len(prev) != 32:
        raise BadRecord("bad_record", "missing or invalid prev (32 bytes)")
    if type(digest) is not bytes or len(digest) != 32:
        raise BadRecord("bad_record", "missing or invalid hash (32 bytes)")
    try:
        canon = cbor2.dumps(rec, canonical=True)
    except Exception as e:
        raise BadRecord("malformed", f"cannot be re-encoded ({str(e)[:120]})") from None
    if canon != body:
        raise BadRecord("non_canonical", "the CBOR is not in deterministic (canonical) form")
    without = {k: v for k, v in rec.items() if k != "hash"}
    if hashlib.sha256(prev + cbor2.dumps(without, canonical=True)).digest() != digest:
        raise BadRecord("modified", "hash does not match the record's contents (record modified)")
    return rec


def jsonable(v: Any) -> Any:
    """A record as JSON-friendly data (bytes as hex) for the CLI and exports."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else "Infinity" if v > 0 else "-Infinity"
    if type(v) is int and v.bit_length() > 64:
        return _leaf_text(v)
    return v
