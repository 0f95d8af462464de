"""The running gateway as every part sees it: one typed object instead of a bag of keys.

`gateway.service` builds one `Gateway` per `stockade serve` and hands it to each part's
`prefork(gw)`, `start(gw)`, `stop(gw)` and admin commands. Each part keeps what it runs in its own
field (`gw.audit`, `gw.vault`, ...), set by that part's own `start` and read by the others, so a
reader sees at once who owns what and mypy checks every use.

The fields' types live in the parts above `core`; they are imported for type checking only
(import-linter ignores `TYPE_CHECKING` imports: nothing here runs part code).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stockade.core.admin import AdminCommands
from stockade.core.config import Config
from stockade.core.events import EventBus
from stockade.core.home import Home

if TYPE_CHECKING:
    from stockade.approvals.service import ApprovalService
    from stockade.audit.writer import AuditWriter
    from stockade.egress.manager import Egress
    from stockade.gateway.pipeline import Pipeline
    from stockade.packs.manifest import PackSpec
    from stockade.packs.store import Installed
    from stockade.policy.runtime import PolicyEngine
    from stockade.sandbox.executor import SandboxExecutor
    from stockade.supervision.admin import AdminServer
    from stockade.supervision.dashboard.app import Dashboard
    from stockade.supervision.webhook import WebhookSender
    from stockade.vault.runtime import Vault


@dataclass
class Listener:
    """One HTTP listener `serve` binds (the gateway's own, the dashboard's)."""

    name: str               # "gateway" | "dashboard"
    app: Any                # an ASGI application
    host: str
    port: int
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sock: Any = None        # the bound socket.socket, once `serve` has bound it


@dataclass
class Gateway:
    """One running gateway: the shared plumbing, then one field per part (None until it starts)."""

    home: Home
    config: Config
    pipeline: Pipeline
    bus: EventBus
    admin_commands: AdminCommands = field(default_factory=AdminCommands)
    # The JSON-RPC methods of this gateway (the transport's own + each part's `RPC_METHODS`).
    rpc_methods: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Any]]] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    stopping: asyncio.Event | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Set by the gateway wiring once the MCP transport exists: tell MCP clients the tool list changed.
    tools_changed: Callable[[], Awaitable[Any]] | None = None
    # -- each part's running objects, set by that part's `start` (or `prefork`) --------------
    sandbox: SandboxExecutor | None = None
    audit: AuditWriter | None = None
    policy: PolicyEngine | None = None
    policy_task: asyncio.Task[None] | None = None
    egress: Egress | None = None
    vault: Vault | None = None
    approvals: ApprovalService | None = None
    approvals_release: asyncio.Task[None] | None = None
    admin: AdminServer | None = None
    dashboard: Dashboard | None = None
    webhook: WebhookSender | None = None
    packs: dict[str, Installed] = field(default_factory=dict)              # registered, by name
    pack_specs: dict[str, tuple[str, PackSpec]] = field(default_factory=dict)  # name -> (version, spec)

    def url(self, name: str) -> str:
        scheme = "https" if any(li.name == name and li.ssl_certfile for li in self.listeners) else "http"
        return f"{scheme}://127.0.0.1:{self.ports[name]}"
