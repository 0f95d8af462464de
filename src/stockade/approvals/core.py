"""Pure core of approvals: canonical argument hashing and the decision state machine.

An approval covers one call: the agent, the capability and SHA-256 of the canonical JSON of the
arguments (sorted keys, no spaces). Any change to the arguments is a different hash and needs its
own approval. Decisions are idempotent: once an approval has left `pending`, a repeated or late
decision changes nothing and reports the recorded outcome.

States::

    pending --approve--> approved --claim--> running --> executed | failed
    pending --reject---> rejected
    pending --ttl------> expired

No clock reads here: callers pass `now`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from stockade.core.encoding import canonical_json

PENDING, APPROVED, RUNNING, EXECUTED, FAILED, REJECTED, EXPIRED = (
    "pending", "approved", "running", "executed", "failed", "rejected", "expired")
STATUSES = (PENDING, APPROVED, RUNNING, EXECUTED, FAILED, REJECTED, EXPIRED)
# Statuses in which the owner said yes (the call runs or ran exactly once).
YES = (APPROVED, RUNNING, EXECUTED, FAILED)


def canonical_args(args: Any) -> str:
    """JSON with sorted keys and no spaces: the form the approval hash is taken over."""
    return canonical_json(args, ascii=True)


def args_hash(args: Any) -> str:
    return hashlib.sha256(canonical_args(args).encode()).hexdigest()


@dataclass(frozen=True)
class Transition:
    """What a decision does to an approval in state `status`."""

    new_status: str | None      # None: nothing changes
    error: str | None = None    # a StockadeError type to raise (e.g. ApprovalExpired)
    conflict: bool = False      # the recorded decision differs from the one asked for


def transition(status: str, action: str, now: float, expires_at: float) -> Transition:
    """Pure. `action` is approve | reject | expire."""
    if status not in STATUSES or action not in ("approve", "reject", "expire"):
        raise ValueError(f"bad status/action {status!r}/{action!r}")
    if status == PENDING:
        if now >= expires_at:
            # Too late for anything but recording the expiry.
            return Transition(EXPIRED, "ApprovalExpired" if action == "approve" else None, action == "approve")
        if action == "approve":
            return Transition(APPROVED)
        if action == "reject":
            return Transition(REJECTED)
        return Transition(None)
    if action == "expire":
        return Transition(None)
    if status == EXPIRED:
        return Transition(None, "ApprovalExpired" if action == "approve" else None, action == "approve")
    recorded_yes = status in YES
    return Transition(None, None, recorded_yes != (action == "approve"))
