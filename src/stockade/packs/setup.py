"""Packs wiring: register installed packs' capabilities at start, on `pack install` (admin
socket) and remove them on `pack remove`; announce `tools/list_changed`; doctor checks."""

from __future__ import annotations

from typing import Any

import jsonschema

from stockade.capabilities.registry import Definition
from stockade.core.admin import AdminCommand
from stockade.core.config import parse_size
from stockade.core.errors import StockadeError
from stockade.core.home import Home
from stockade.core.wiring import Gateway
from stockade.packs import runner, store
from stockade.packs.manifest import PackSpec, check_pack_name, pack_error, parse_pack_yaml


def definitions(spec: PackSpec, source: str) -> list[Definition]:
    out = []
    for c in spec.capabilities:
        jsonschema.Draft202012Validator.check_schema(c.input)
        jsonschema.Draft202012Validator.check_schema(c.output)
        out.append(Definition(
            c.name, 1, c.purpose.strip(), c.when_to_use.strip(), "sandbox", c.side_effects, c.default_tier,
            c.secrets, c.input, c.output, tuple(c.errors), source, spec.name,
            jsonschema.Draft202012Validator(c.input, format_checker=jsonschema.FormatChecker()),
            jsonschema.Draft202012Validator(c.output)))
    return out


def _register(gw: Gateway, pk: store.Installed) -> list[str]:
    reg = gw.pipeline.registry
    check_pack_name(pk.name, {d.name.split(".", 1)[0] for d in reg.all() if d.pack is None})
    path = pk.path(gw.home)
    store.verify_source(gw.pipeline.db, path)  # refuse to register a pack that no longer verifies
    spec = parse_pack_yaml((path / "pack.yaml").read_text(), str(path / "pack.yaml"))
    defs = definitions(spec, str(path / "pack.yaml"))
    reg.remove([d.name for d in reg.all() if d.pack == pk.name])
    reg.add(defs, {d.name: runner.run for d in defs})
    gw.packs[pk.name] = pk
    return [d.name for d in defs]


def pack_info(gw: Gateway, definition: Definition) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """For the sandbox executor: where a pack capability's code is, what the runner must check,
    and the profile the pack asks for. The trust store is read per call, so untrusting a publisher
    stops its packs at the next call."""
    pk = gw.packs.get(definition.pack or "")
    if pk is None:
        raise pack_error(f"{definition.pack} is not installed", "pack.yaml")
    spec = gw.pack_specs.get(pk.name)
    if spec is None or spec[0] != pk.version:   # parsed once per installed version, not per call
        spec = (pk.version, parse_pack_yaml((pk.path(gw.home) / "pack.yaml").read_text()))
        gw.pack_specs[pk.name] = spec
    runner_info = store.runner_info(gw.home, gw.pipeline.db, pk, {c.name: c.entry for c in spec[1].capabilities})
    sb = spec[1].sandbox
    asked: dict[str, Any] = {"seccomp": sb.seccomp, "egress": list(sb.egress), "timeout": sb.timeout}
    if sb.memory is not None:
        asked["memory"] = parse_size(sb.memory)
    return runner_info.pop("host_path"), {"pack": runner_info}, asked


async def start(gw: Gateway) -> None:
    for pk in store.installed(gw.pipeline.db):
        try:
            _register(gw, pk)
        except (StockadeError, Exception) as e:  # one bad pack must not stop the gateway
            msg = e.message if isinstance(e, StockadeError) else f"{type(e).__name__}: {e}"
            gw.bus.publish("pack.invalid", {"pack": pk.name, "version": pk.version, "error": msg}, "critical")
            gw.pipeline.health["packs"] = {"status": "degraded", "invalid": pk.name, "error": msg}


async def _announce(gw: Gateway) -> None:
    if gw.tools_changed is not None:
        await gw.tools_changed()
    gw.bus.publish("tools.list_changed", {})


async def _reload(gw: Gateway, args: dict[str, Any]) -> Any:
    name = args.get("name")
    reg = gw.pipeline.registry
    current = {pk.name: pk for pk in store.installed(gw.pipeline.db)}
    changed: list[str] = []
    for pname in ([name] if name else sorted(set(current) | set(gw.packs))):
        if pname in current:
            changed += _register(gw, current[pname])
        else:
            gone = [d.name for d in reg.all() if d.pack == pname]
            reg.remove(gone)
            gw.packs.pop(pname, None)
            changed += gone
    await _announce(gw)
    return {"capabilities": changed}


ADMIN_COMMANDS = {"packs.reload": AdminCommand(_reload)}


def doctor(home: Home) -> dict[str, Any]:
    conn = home.db()
    problems = {}
    pks = store.installed(conn)
    for pk in pks:
        try:
            store.verify_source(conn, pk.path(home))
            if pk.deps_sha256 and store.deps_digest(pk.path(home) / "deps") != pk.deps_sha256:
                problems[pk.name] = "installed dependencies changed"
        except StockadeError as e:
            problems[pk.name] = e.message
    st = "critical" if problems else "ok"
    return {"packs": {"status": st, "installed": len(pks), **({"invalid": problems} if problems else {})}}
