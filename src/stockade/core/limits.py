"""Bounds shared by the edge and the audit log.

The edge (every transport) refuses a request deeper, longer or stranger than these before any
part sees it; the audit writer never writes a record its own reader could not decode. Both take
their numbers from here, so the two can never drift apart (the gap between them was an attack:
arguments the reader refused but the writer wrote).
"""

from __future__ import annotations

# Nesting of a request's JSON (arrays and objects), counted from the request body itself.
MAX_JSON_DEPTH = 64
# Largest string and largest container a request may hold anywhere inside it.
MAX_STRING_BYTES = 1 << 20
MAX_CONTAINER_ITEMS = 10_000
# Nesting an audit record may have: the request's depth plus the record's own envelope, far
# below the reader's decoder limit (`AUDIT_DECODE_DEPTH`).
MAX_RECORD_DEPTH = MAX_JSON_DEPTH + 16
AUDIT_DECODE_DEPTH = 400
# Nesting of one value an agent stores with state.set (counted from the value itself); well
# below the request's depth, so a stored value always fits back into a result and an audit record.
MAX_STATE_VALUE_DEPTH = 32
# What a refused call keeps of its arguments in the audit log (the rest becomes a digest).
REFUSED_ARGS_PREFIX_BYTES = 4096

assert MAX_RECORD_DEPTH < AUDIT_DECODE_DEPTH  # noqa: S101  (a build-time invariant)

# What failed calls cost an agent (`gateway.costs.FailureLimiter`): a bucket of `FAILURE_BURST`
# failures refilled at `FAILURE_PER_SECOND`; an agent that empties it is refused every call,
# without any further work, for `FAILURE_COOLDOWN_SECONDS`.
FAILURE_BURST = 30
FAILURE_PER_SECOND = 0.5
FAILURE_COOLDOWN_SECONDS = 30.0

# The HTTP edge against slow and many connections (`edge.http`, `edge.body`): a request's head
# must be complete within `HEADER_READ_SECONDS` of its first byte (or of the connection), its
# body within `BODY_READ_SECONDS`; at most `MAX_CONNECTIONS` connections are served at once.
HEADER_READ_SECONDS = 10.0
BODY_READ_SECONDS = 20.0
MAX_CONNECTIONS = 1024
