"""The structured errors of DESIGN.md §9.

Every failure an agent or the owner can see is a `StockadeError`: a stable `type`, a human
message and recovery hints. Transports turn it into JSON-RPC / MCP errors; nothing else leaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# JSON-RPC codes (DESIGN.md §9).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RATE_LIMITED = -32000
POLICY_DENIED = -32001
APPROVAL_PENDING = -32002
AUTH_FAILED = -32003
# Server-defined (JSON-RPC reserves -32000..-32099): a capability ran and failed with a typed
# error (FileNotFound, PathDenied, Timeout, ...). `error.data.type` names it.
CAPABILITY_ERROR = -32010

_CODES = {
    "InvalidInput": INVALID_PARAMS,
    "Unauthenticated": AUTH_FAILED,
    "PolicyDenied": POLICY_DENIED,
    "ApprovalPending": APPROVAL_PENDING,
    "RateLimited": RATE_LIMITED,
    "Internal": INTERNAL_ERROR,
    "MethodNotFound": METHOD_NOT_FOUND,
    "ParseError": PARSE_ERROR,
    "InvalidRequest": INVALID_REQUEST,
}

# Default recovery hints per type; callers may pass their own.
def _hint(action: str, description: str) -> list[dict[str, str]]:
    return [{"action": action, "description": description}]


_RECOVERY: dict[str, list[dict[str, str]]] = {
    "InvalidInput": _hint("fix_arguments",
                          "Check the arguments against the capability's input schema (capabilities.describe)."),
    "Unauthenticated": _hint("check_key",
                             "Send 'Authorization: Bearer stk_...' with a valid, unrevoked agent key."),
    "PolicyDenied": _hint("ask_owner",
                          "This call is blocked by policy; ask the owner to change the policy if it is needed."),
    "ApprovalPending": _hint("poll_approval",
                             "The owner must approve this call; fetch the outcome later with approvals.status."),
    "RateLimited": _hint("wait", "Retry after 'retry_after' seconds."),
    "CapabilityNotFound": _hint("list_capabilities", "Call capabilities.list to see what this agent may use."),
    "Internal": _hint("retry_later",
                      "An internal error occurred; the owner can find details in the gateway log."),
}


@dataclass
class StockadeError(Exception):
    """An error with a stable type name, safe to show to an agent."""

    type: str
    message: str
    recovery: list[dict[str, str]] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.type}: {self.message}")
        if self.recovery is None:
            self.recovery = list(_RECOVERY.get(self.type, []))

    @property
    def code(self) -> int:
        """The JSON-RPC error code for this type."""
        return _CODES.get(self.type, CAPABILITY_ERROR)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message, "recovery": self.recovery}
        out.update(self.data)
        return out


def err(type_: str, message: str, recovery: list[dict[str, str]] | None = None, **data: Any) -> StockadeError:
    """Shorthand: `raise err("PathDenied", "...", path=p)`."""
    return StockadeError(type_, message, recovery, dict(data))


class ConfigError(Exception):
    """A file the owner wrote (stockade.yaml, a policy, a definition) is invalid.

    `errors` holds `file:line: message` strings; the CLI prints them and exits 2.
    """

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors
