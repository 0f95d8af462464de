"""The hook contracts of the call path: how each part plugs into `gateway.pipeline.Pipeline`.

The pipeline calls these and nothing else of the parts; a part that is not configured is
replaced by a conservative default (in the pipeline module). They live in the bottom layer so a
part can name the contract it implements without importing the gateway.

`definition` is a `capabilities.registry.Definition`; it is typed `Any` here because the
capability definitions sit above `core` (a protocol cannot name them without an upward import).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from stockade.core.errors import StockadeError, err
from stockade.core.types import Caller, Decision


class PolicyHook(Protocol):
    def decide(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        """The tier for this call; counts rate limits."""
        ...

    def peek(self, agent: str, capability: str, args: dict[str, Any]) -> Decision:
        """The tier this call would get; counts nothing."""
        ...

    def visible(self, agent: str, capability: str) -> bool: ...


class AuditHook(Protocol):
    async def record(self, rec: dict[str, Any]) -> Any:
        """Returns once the record is durable (raises StockadeError when it cannot be)."""
        ...

    def agent_over_budget(self, agent: str) -> float | None:
        """Seconds to wait when `agent`'s audit bytes in the current window exceed its budget."""
        ...


class ApprovalHook(Protocol):
    async def request(self, caller: Caller, definition: Any, args: dict[str, Any],
                      decision: Decision, call_id: str) -> None:
        """Returns when the call is approved; raises ApprovalPending/Rejected/Expired otherwise."""
        ...

    def completed(self, call_id: str, result: Any, error: StockadeError | None) -> None:
        """How an approved call ended (stored for the agent to fetch)."""
        ...


class SecretsHook(Protocol):
    def resolve(self, caller: Caller, definition: Any,
                args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Arguments with `${secret:NAME}` resolved, and the values used (to scrub them after)."""
        ...


class ExecutorHook(Protocol):
    async def run(self, caller: Caller, definition: Any, args: dict[str, Any],
                  call_id: str) -> dict[str, Any]: ...


@runtime_checkable
class ApprovalOutcomes(Protocol):
    """An approvals hook that also keeps each approval's outcome for the agent that asked.

    The `agent.approval` capability and the `approvals.status` method read through this, so
    neither needs the approvals part itself (a gateway without it answers `Internal`).
    """

    async def status(self, agent: str, aid: Any, wait: Any = 0) -> dict[str, Any]:
        """The agent's own approval `aid`, optionally waiting up to `wait` seconds until final."""
        ...


def approval_outcomes(hook: object) -> ApprovalOutcomes:
    """`hook` as an `ApprovalOutcomes`, or `Internal` when the approvals part is not running."""
    if not isinstance(hook, ApprovalOutcomes):
        raise err("Internal", "approvals are not running on this gateway")
    return hook
