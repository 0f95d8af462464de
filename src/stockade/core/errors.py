"""The structured errors (docs/design.md, "Errors").

Every failure an agent or the owner can see is a `StockadeError`: a stable `type`, a human
message and recovery hints. Transports turn it into JSON-RPC / MCP errors; nothing else leaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# JSON-RPC codes.
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


class RpcCode:
    """The JSON-RPC codes under names of their own: inside `ErrorType`'s body a member such as
    `INVALID_REQUEST` hides the module constant of the same name from the members after it."""

    PARSE_ERROR = PARSE_ERROR
    INVALID_REQUEST = INVALID_REQUEST
    METHOD_NOT_FOUND = METHOD_NOT_FOUND
    INVALID_PARAMS = INVALID_PARAMS
    INTERNAL_ERROR = INTERNAL_ERROR
    RATE_LIMITED = RATE_LIMITED
    POLICY_DENIED = POLICY_DENIED
    APPROVAL_PENDING = APPROVAL_PENDING
    AUTH_FAILED = AUTH_FAILED
    CAPABILITY_ERROR = CAPABILITY_ERROR


class ErrorType(StrEnum):
    """Every error type an agent or the owner can see, with its JSON-RPC code and HTTP status.

    The one mapping: JSON-RPC, MCP, the dashboard's JSON API and its pages all take the code and
    the status from here. A `StrEnum`, so `e.type == "InvalidInput"` keeps working.
    """

    code: int
    http_status: int

    def __new__(cls, value: str, code: int = CAPABILITY_ERROR, http_status: int = 400) -> ErrorType:
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.code = code
        obj.http_status = http_status
        return obj

    # protocol and edge
    PARSE_ERROR = ("ParseError", RpcCode.PARSE_ERROR, 400)
    INVALID_REQUEST = ("InvalidRequest", RpcCode.INVALID_REQUEST, 400)
    METHOD_NOT_FOUND = ("MethodNotFound", RpcCode.METHOD_NOT_FOUND, 404)
    INVALID_INPUT = ("InvalidInput", RpcCode.INVALID_PARAMS, 400)
    PAYLOAD_TOO_LARGE = ("PayloadTooLarge", RpcCode.INVALID_REQUEST, 413)
    UNAUTHENTICATED = ("Unauthenticated", RpcCode.AUTH_FAILED, 401)
    FORBIDDEN = ("Forbidden", RpcCode.AUTH_FAILED, 403)
    NOT_FOUND = ("NotFound", RpcCode.CAPABILITY_ERROR, 404)
    INTERNAL = ("Internal", RpcCode.INTERNAL_ERROR, 500)
    UNAVAILABLE = ("Unavailable", RpcCode.CAPABILITY_ERROR, 503)   # stockade.db locked elsewhere: retry
    # decisions
    POLICY_DENIED = ("PolicyDenied", RpcCode.POLICY_DENIED, 403)
    RATE_LIMITED = ("RateLimited", RpcCode.RATE_LIMITED, 429)
    APPROVAL_PENDING = ("ApprovalPending", RpcCode.APPROVAL_PENDING, 202)
    APPROVAL_NOT_FOUND = ("ApprovalNotFound", RpcCode.CAPABILITY_ERROR, 404)
    APPROVAL_REJECTED = ("ApprovalRejected", RpcCode.CAPABILITY_ERROR, 403)
    APPROVAL_EXPIRED = ("ApprovalExpired", RpcCode.CAPABILITY_ERROR, 409)
    CAPABILITY_NOT_FOUND = ("CapabilityNotFound", RpcCode.METHOD_NOT_FOUND, 404)
    CONFLICT = ("Conflict", RpcCode.CAPABILITY_ERROR, 409)
    # execution
    SANDBOX_UNAVAILABLE = ("SandboxUnavailable", RpcCode.CAPABILITY_ERROR, 503)
    RESOURCE_EXHAUSTED = ("ResourceExhausted", RpcCode.CAPABILITY_ERROR, 400)
    TIMEOUT = ("Timeout", RpcCode.CAPABILITY_ERROR, 400)
    FILE_NOT_FOUND = ("FileNotFound", RpcCode.CAPABILITY_ERROR, 400)
    PATH_DENIED = ("PathDenied", RpcCode.CAPABILITY_ERROR, 400)
    PATH_WRITE_PROTECTED = ("PathWriteProtected", RpcCode.CAPABILITY_ERROR, 400)
    NETWORK_ERROR = ("NetworkError", RpcCode.CAPABILITY_ERROR, 400)
    UNREACHABLE = ("Unreachable", RpcCode.CAPABILITY_ERROR, 400)
    EGRESS_DENIED = ("EgressDenied", RpcCode.CAPABILITY_ERROR, 400)
    # packs: the store no longer holds the bytes that were verified (a pack's own code never raises it)
    PACK_SIGNATURE_INVALID = ("PackSignatureInvalid", RpcCode.CAPABILITY_ERROR, 400)
    # vault
    VAULT_SEALED = ("VaultSealed", RpcCode.CAPABILITY_ERROR, 503)
    VAULT_CORRUPT = ("VaultCorrupt", RpcCode.CAPABILITY_ERROR, 500)
    VAULT_EXISTS = ("VaultExists", RpcCode.CAPABILITY_ERROR, 409)
    VAULT_NOT_INITIALIZED = ("VaultNotInitialized", RpcCode.CAPABILITY_ERROR, 400)
    WRONG_PASSPHRASE = ("WrongPassphrase", RpcCode.CAPABILITY_ERROR, 401)
    SECRET_NOT_FOUND = ("SecretNotFound", RpcCode.CAPABILITY_ERROR, 404)
    SECRET_NOT_IN_SCOPE = ("SecretNotInScope", RpcCode.CAPABILITY_ERROR, 403)
    # agent state (state.*): the agent's keys or bytes quota is full; 507 Insufficient Storage
    # (RFC 4918): the call was well-formed, retrying will not help until the agent frees space.
    QUOTA_EXCEEDED = ("QuotaExceeded", RpcCode.CAPABILITY_ERROR, 507)

    @classmethod
    def of(cls, name: str) -> ErrorType | None:
        """The member named `name`, or None for a type stockade does not know (a pack's own)."""
        return cls._value2member_map_.get(name)  # type: ignore[return-value]


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
    "QuotaExceeded": _hint("free_space",
                           "Delete keys you no longer need (state.list, state.delete) or ask the owner "
                           "to raise the quota (stockade.yaml, state:)."),
    "Unavailable": _hint("retry_later", "Retry after 'retry_after' seconds; the gateway is briefly unable to "
                                        "record this call."),
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
        known = ErrorType.of(self.type)
        return known.code if known else CAPABILITY_ERROR

    @property
    def http_status(self) -> int:
        """The HTTP status every HTTP surface (gateway, dashboard API and pages) answers with."""
        known = ErrorType.of(self.type)
        return known.http_status if known else 400

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
