"""state.*: the agent's own durable key-value state, in the gateway (capabilities.statestore).

The agent is always `ctx.caller.agent` (the authenticated caller); no argument can name
another agent's keys. The store's blocking SQLite work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from stockade.capabilities.registry import implements
from stockade.capabilities.statestore import Limits, StateStore

# One store per running pipeline (one per `stockade serve`), opened on the first state call with
# the quotas of stockade.yaml as they are then (a change takes effect at the next start).
_STORES: weakref.WeakKeyDictionary[Any, StateStore] = weakref.WeakKeyDictionary()


def store_of(pipeline: Any) -> StateStore:
    store = _STORES.get(pipeline)
    if store is None:
        cfg = pipeline.home.config().state
        store = StateStore(pipeline.home.db_path, Limits(cfg.max_keys, cfg.max_bytes, cfg.max_value_bytes))
        weakref.finalize(pipeline, store.close)
        _STORES[pipeline] = store
    return store


@implements("state.get")
async def state_get(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    entry = await asyncio.to_thread(store_of(ctx.pipeline).get, ctx.caller.agent, args["key"])
    if entry is None:
        return {"key": args["key"], "found": False}
    return {"found": True, **entry.describe(with_value=True)}


@implements("state.set")
async def state_set(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    entry = await asyncio.to_thread(store_of(ctx.pipeline).set, ctx.caller.agent, args["key"], args["value"],
                                    args.get("expected_version"), args.get("ttl_seconds"))
    return entry.describe()


@implements("state.delete")
async def state_delete(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    version = await asyncio.to_thread(store_of(ctx.pipeline).delete, ctx.caller.agent, args["key"],
                                      args.get("expected_version"))
    return {"key": args["key"], "deleted": version is not None, **({"version": version} if version else {})}


@implements("state.list")
async def state_list(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    store = store_of(ctx.pipeline)
    agent = ctx.caller.agent

    def page() -> dict[str, Any]:
        entries, cursor = store.list(agent, args.get("prefix", ""), args.get("limit", 100), args.get("cursor"))
        return {"keys": [e.describe() for e in entries], "next_cursor": cursor,
                "usage": store.usage(agent).describe(store.limits)}

    return await asyncio.to_thread(page)
