"""Policy wiring for `stockade serve` and `stockade init` (see gateway/service.py, home.py).

start: compile every layer (an invalid policy at start is a ConfigError: the gateway refuses to
run rather than guess), plug the engine into the pipeline, start the hot-reload watcher.
The watcher polls the policy files' (mtime, size, inode) every second; a change is recompiled and
swapped in, or refused with file:line errors while the last good policy stays in force. Either
way it is announced on the bus and recorded in the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from stockade.capabilities.registry import Definition, Registry, load_registry, parse_definitions
from stockade.core.errors import ConfigError
from stockade.core.home import Home, write_private
from stockade.core.logs import log
from stockade.core.wiring import Gateway
from stockade.packs import setup as packs_setup
from stockade.packs import store as packs_store
from stockade.packs.manifest import parse_pack_yaml
from stockade.policy import loader
from stockade.policy.facts import gateway_facts
from stockade.policy.ratelimit import RateLimiter
from stockade.policy.runtime import PolicyEngine
from stockade.vault.setup import CAPS_FILE as VAULT_CAPABILITIES

POLL_SECONDS = 1.0
SETTLE_SECONDS = 1.0     # a changed file must stay the same this long before it is loaded
READ_TIMEOUT = 10.0      # reading every policy file takes at most this long, or the reload is refused


def catalog(registry: Registry | None = None) -> loader.Catalog:
    """The names a policy may use: `registry`'s (the built-in one when None) and the vault's
    in-process capabilities, which the vault registers only when the gateway starts."""
    if registry is None:
        try:
            registry = load_registry()
        except Exception:  # noqa: BLE001 - another part's broken definition must not hide policy errors
            return loader.catalog()
    defs: list[Definition] = registry.all()
    if "secrets.list" not in registry:
        with contextlib.suppress(OSError, ConfigError):   # without the vault part there is nothing to add
            defs += parse_definitions(VAULT_CAPABILITIES.read_text(), str(VAULT_CAPABILITIES))
    return loader.catalog(defs)


def home_catalog(home: Home | None) -> loader.Catalog:
    """`catalog()` plus the capabilities of the packs installed in `home` (offline commands:
    `policy validate | explain` must know a pack's names as the running gateway does)."""
    cat = catalog()
    if home is None or not home.db_path.exists():
        return cat
    for d in _pack_definitions(home):
        props = d.input_schema.get("properties")
        cat.args[d.name] = frozenset(props) if isinstance(props, dict) else None
    return cat


def _pack_definitions(home: Home) -> list[Definition]:
    out: list[Definition] = []
    try:
        conn = home.db()
        try:
            packs = packs_store.installed(conn)
        finally:
            conn.close()
    except Exception:  # noqa: BLE001 - a home without the packs table has no packs
        return out
    for pk in packs:
        path = pk.path(home) / "pack.yaml"
        with contextlib.suppress(Exception):   # a broken pack is `pack verify`'s business, not policy's
            out += packs_setup.definitions(parse_pack_yaml(path.read_text(), str(path)), str(path))
    return out


def init(home: Home, template: str) -> list[str]:
    """Write policies/org.yaml from the chosen template unless the owner already has one."""
    path = home.policies / "org.yaml"
    if path.exists():
        return []
    home.policies.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home.policies / "agents").mkdir(mode=0o700, exist_ok=True)
    write_private(path, loader.template_text(template or "personal"), exist_ok=False)
    return [str(path)]


def _health(engine: PolicyEngine, status: str = "ok", errors: list[str] | None = None) -> dict[str, Any]:
    h: dict[str, Any] = {"status": status, "rules": engine.policy.rule_count, "version": engine.policy.version}
    if errors:
        h["errors"] = errors[:20]
        h["note"] = "the last valid policy is in force"
    return h


async def start(gw: Gateway) -> None:
    cat = catalog(gw.pipeline.registry)
    policy = loader.load_home(gw.home, cat, gateway_facts(gw))   # ConfigError -> serve refuses to start
    limiter = RateLimiter(gw.home.db())
    engine = PolicyEngine(policy, limiter)
    gw.pipeline.policy = engine
    gw.policy = engine
    gw.pipeline.health["policy"] = _health(engine)
    gw.policy_task = asyncio.create_task(_watch(gw, engine), name="policy-reload")


async def stop(gw: Gateway) -> None:
    task, gw.policy_task = gw.policy_task, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if gw.policy is not None:
        gw.policy.limiter.close()


class ReloadGate:
    """Pure: when a change of the policy files' signature may be loaded. Only once the same new
    signature has been seen for `settle` seconds: a file being written keeps changing, so its
    partial prefix is never compiled (an editor's write-then-rename settles at once)."""

    def __init__(self, loaded: Any, settle: float = SETTLE_SECONDS):
        self.loaded = loaded
        self.settle = settle
        self.pending: Any = None
        self.since = 0.0

    def observe(self, sig: Any, now: float) -> bool:
        if sig == self.loaded:
            self.pending = None
            return False
        if sig != self.pending:
            self.pending, self.since = sig, now
            return False
        if now - self.since < self.settle:
            return False
        self.loaded, self.pending = sig, None
        return True


class _Reader:
    """File work off the event loop, bounded in time; a read still stuck from last time (a slow
    filesystem) is not joined by another: the reload waits, the loop serves on."""

    def __init__(self) -> None:
        self.busy: asyncio.Future[Any] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.busy is not None and not self.busy.done():
            raise ConfigError([f"policy files: a read is still stuck after {READ_TIMEOUT:.0f}s; kept the last policy"])
        self.busy = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(self.busy), READ_TIMEOUT)
        except TimeoutError:
            raise ConfigError([f"policy files: reading took more than {READ_TIMEOUT:.0f}s; "
                               "kept the last policy"]) from None


async def reload(gw: Gateway, engine: PolicyEngine, reader: _Reader | None = None) -> bool:
    """Recompile now (off the event loop); True if the new policy is in force."""
    try:
        policy = await (reader or _Reader()).run(loader.load_home, gw.home, catalog(gw.pipeline.registry),
                                                 gateway_facts(gw))
    except ConfigError as e:
        gw.pipeline.health["policy"] = _health(engine, "degraded", e.errors)
        gw.bus.publish("policy.rejected", {"errors": e.errors[:50], "version": engine.policy.version}, "warning")
        await _record(gw, "policy.rejected", errors=e.errors[:50], version=engine.policy.version)
        return False
    old = engine.policy.version
    engine.swap(policy)
    gw.pipeline.health["policy"] = _health(engine)
    data = {"version": policy.version, "previous": old, "rules": policy.rule_count, "files": list(policy.files)}
    gw.bus.publish("policy.reloaded", data)
    await _record(gw, "policy.reloaded", **data)
    return True


async def _record(gw: Gateway, kind: str, **data: Any) -> None:
    try:
        await gw.pipeline.record_event(kind, **data)
    except Exception:  # noqa: BLE001 - the bus event already went out; say why the audit did not
        log.exception("policy: could not audit %s", kind)


async def _watch(gw: Gateway, engine: PolicyEngine) -> None:
    reader = _Reader()
    try:
        gate = ReloadGate(await reader.run(loader.signature, gw.home))
    except ConfigError:
        gate = ReloadGate(None)       # unreadable now: the first readable state is loaded once settled
    while True:
        await asyncio.sleep(POLL_SECONDS)
        try:
            if gate.observe(await reader.run(loader.signature, gw.home), time.monotonic()):
                await reload(gw, engine, reader)
        except ConfigError as e:   # the directory itself could not be read in time
            gw.pipeline.health["policy"] = _health(engine, "degraded", e.errors)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - keep watching; the last good policy stays
            log.exception("policy reload failed")


def doctor(home: Home) -> dict[str, Any]:
    try:
        policy = loader.load_home(home, catalog())
    except ConfigError as e:
        return {"policy": {"status": "critical", "rules": 0, "errors": e.errors[:20]}}
    org = home.policies / "org.yaml"
    out: dict[str, Any] = {"status": "ok", "rules": policy.rule_count, "version": policy.version}
    if not org.exists():
        out.update(status="degraded", note="no policies/org.yaml: only the system layer applies "
                                           "(everything else needs approval)")
    return {"policy": out}
