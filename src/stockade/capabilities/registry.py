"""Capability definitions (YAML) + implementations (plain functions) = the registry.

A definition is the contract an agent sees (name, purpose, JSON Schemas, errors, default tier);
an implementation is a function `fn(ctx, args) -> dict`. `execution: sandbox` implementations run
in a per-call sandbox child (stockade.sandbox); `inprocess` ones run in the gateway and must not
touch the host beyond reading gateway state.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockade.capabilities import impl as impl_package
from stockade.capabilities.schema import Check, compile_schema
from stockade.core import yamlfile
from stockade.core.errors import ConfigError, err
from stockade.core.types import CAPABILITY_NAME_PATTERN as NAME_PATTERN
from stockade.core.types import TierName

__all__ = ["NAME_PATTERN", "Definition", "Registry", "implementations", "implements", "load_registry",
           "module_implementations", "parse_definitions"]
DEFINITIONS_DIR = Path(__file__).parent / "definitions"

Impl = Callable[..., Any]


def implements(name: str) -> Callable[[Impl], Impl]:
    """Mark `fn` as the implementation of capability `name`. Nothing is registered on import:
    `implementations()` collects the marked functions of the implementation modules."""

    def deco(fn: Impl) -> Impl:
        fn.capability = name  # type: ignore[attr-defined]
        return fn

    return deco


def module_implementations(module: ModuleType) -> dict[str, Impl]:
    """The capability functions a module defines (marked with `@implements`), by capability."""
    found: dict[str, Impl] = {}
    for fn in vars(module).values():
        name = getattr(fn, "capability", None)
        if callable(fn) and isinstance(name, str) and getattr(fn, "__module__", None) == module.__name__:
            if name in found and found[name] is not fn:
                raise RuntimeError(f"two implementations for {name} in {module.__name__}")
            found[name] = fn
    return found


class _DefModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(1, ge=1)
    purpose: str = Field(min_length=1)
    when_to_use: str = Field(min_length=1)
    execution: Literal["inprocess", "sandbox"] = "inprocess"
    side_effects: bool = False
    default_tier: TierName = "notify"
    secrets: bool = False              # may resolve ${secret:NAME} placeholders (vault)
    # Path arguments the capability acts *below* (recursive list/search, move/copy/delete of a
    # directory): true, or the name of a boolean argument that turns it on. Policy's path_touches
    # reads it, so a rule protecting a path also stops calls on its ancestors.
    acts_below: dict[str, bool | str] = {}
    input: dict[str, Any]
    output: dict[str, Any]
    errors: list[str] = []


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capabilities: list[_DefModel]


@dataclass(frozen=True)
class Definition:
    name: str
    version: int
    purpose: str
    when_to_use: str
    execution: str
    side_effects: bool
    default_tier: str
    secrets: bool
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    errors: tuple[str, ...]
    source: str
    pack: str | None = None
    validator: Any = field(default=None, compare=False, repr=False)
    output_validator: Any = field(default=None, compare=False, repr=False)
    acts_below: tuple[tuple[str, bool | str], ...] = ()
    # Fast acceptance checks of the two schemas (capabilities.schema), None where not compiled.
    accepts: Check | None = field(default=None, init=False, compare=False, repr=False)
    output_accepts: Check | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accepts", _fast(self.validator))
        object.__setattr__(self, "output_accepts", _fast(self.output_validator))

    def input_errors(self, args: Any) -> list[jsonschema.ValidationError]:
        """Why `args` do not match the input schema (empty: they do). The compiled check
        answers for arguments it accepts; anything else is jsonschema's to judge and explain."""
        if self.accepts is not None and self.accepts(args):
            return []
        return list(self.validator.iter_errors(args))

    def output_valid(self, result: Any) -> bool:
        """Whether a result matches the output schema (compiled check first, jsonschema decides the rest)."""
        return (self.output_accepts is not None and self.output_accepts(result)) or \
            bool(self.output_validator.is_valid(result))

    @property
    def tool_name(self) -> str:
        """MCP tool names cannot hold dots everywhere: `filesystem.read` <-> `filesystem__read`."""
        return self.name.replace(".", "__")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "purpose": self.purpose,
            "when_to_use": self.when_to_use,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "errors": list(self.errors),
            "default_tier": self.default_tier,
            "side_effects": self.side_effects,
            **({"pack": self.pack} if self.pack else {}),
        }


def _fast(validator: Any) -> Check | None:
    """The compiled check of a Draft 2020-12 validator's schema (other drafts: None, jsonschema only)."""
    if type(validator) is not jsonschema.Draft202012Validator:
        return None
    return compile_schema(validator.schema)


def tool_to_capability(tool: str) -> str:
    return tool.replace("__", ".")


def parse_definitions(text: str, fname: str, pack: str | None = None) -> list[Definition]:
    """Pure: YAML text -> definitions, or ConfigError with file:line."""
    data, lines = yamlfile.loads(text, fname)
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as e:
        raise ConfigError(yamlfile.pydantic_errors(e, fname, lines)) from None
    out: list[Definition] = []
    errors: list[str] = []
    for i, d in enumerate(model.capabilities):
        for key, schema in (("input", d.input), ("output", d.output)):
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                line = yamlfile.line_of(lines, ("capabilities", i, key, *e.path))
                errors.append(f"{fname}:{line}: capabilities.{i}.{key}: invalid JSON Schema: {e.message}")
        declared = d.input.get("properties")
        props: dict[str, Any] = declared if isinstance(declared, dict) else {}
        for arg, when in d.acts_below.items():
            if arg not in props or (isinstance(when, str) and (props.get(when) or {}).get("type") != "boolean"):
                errors.append(f"{fname}:{yamlfile.line_of(lines, ('capabilities', i, 'acts_below'))}: "
                              f"{d.name}: acts_below.{arg}: names an argument the input schema lacks "
                              "(or a flag that is not a boolean argument)")
        if d.input.get("type") != "object":
            errors.append(f"{fname}:{yamlfile.line_of(lines, ('capabilities', i, 'input'))}: "
                          f"{d.name}: input schema must have type: object")
        if errors:
            continue
        out.append(Definition(
            d.name, d.version, d.purpose.strip(), d.when_to_use.strip(), d.execution, d.side_effects,
            d.default_tier, d.secrets, d.input, d.output, tuple(d.errors), fname, pack,
            jsonschema.Draft202012Validator(d.input, format_checker=jsonschema.FormatChecker()),
            jsonschema.Draft202012Validator(d.output), tuple(d.acts_below.items()),
        ))
    if errors:
        raise ConfigError(errors)
    return out


def implementations() -> dict[str, Impl]:
    """Every built-in implementation: each module of `stockade.capabilities.impl`, imported and
    read for its `@implements` functions. Two modules implementing one capability is an error."""
    impls: dict[str, Impl] = {}
    for m in pkgutil.iter_modules(impl_package.__path__):
        module = importlib.import_module(f"{impl_package.__name__}.{m.name}")
        for name, fn in module_implementations(module).items():
            if name in impls and impls[name] is not fn:
                raise RuntimeError(f"two implementations for {name}")
            impls[name] = fn
    return impls


class Registry:
    def __init__(self, definitions: list[Definition], impls: dict[str, Impl]):
        self._defs: dict[str, Definition] = {}
        self._impls = dict(impls)
        for d in definitions:
            if d.name in self._defs:
                raise ConfigError([f"{d.source}:1: capability {d.name} defined twice "
                                   f"(also in {self._defs[d.name].source})"])
            self._defs[d.name] = d
        missing = sorted(set(self._defs) - set(self._impls))
        orphan = sorted(set(self._impls) - set(self._defs))
        problems = [f"{self._defs[n].source}:1: {n}: definition has no implementation" for n in missing]
        problems += [f"{n}: implementation has no definition" for n in orphan]
        if problems:
            raise ConfigError(problems)

    def get(self, name: str) -> Definition:
        d = self._defs.get(name)
        if d is None:
            raise err("CapabilityNotFound", f"no capability named {name!r}")
        return d

    def impl(self, name: str) -> Impl:
        return self._impls[name]

    def all(self) -> list[Definition]:
        return sorted(self._defs.values(), key=lambda d: d.name)

    def __contains__(self, name: str) -> bool:
        return name in self._defs

    def add(self, defs: list[Definition], impls: dict[str, Impl]) -> None:
        """Register more (packs); same both-ways check."""
        Registry(defs, impls)  # validates the pairing on its own
        for d in defs:
            if d.name in self._defs:
                raise ConfigError([f"{d.source}:1: capability {d.name} already exists"])
        for d in defs:
            self._defs[d.name] = d
        self._impls.update(impls)

    def remove(self, names: list[str]) -> None:
        for n in names:
            self._defs.pop(n, None)
            self._impls.pop(n, None)


def load_registry(extra_dirs: list[Path] | None = None) -> Registry:
    """Built-in definitions + implementations (raises ConfigError listing every problem)."""
    impls = implementations()
    defs: list[Definition] = []
    errors: list[str] = []
    for d in [DEFINITIONS_DIR, *(extra_dirs or [])]:
        for f in sorted(d.glob("*.yaml")):
            try:
                defs.extend(_definitions_file(f))
            except ConfigError as e:
                errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return Registry(defs, impls)


# Parsed definition files by (path, mtime, size). `serve` loads the registry more than once
# (the gateway's own, the sandbox's list of modules to preload before the zygote forks, the
# policy catalog); each load re-parsed the YAML and re-checked every schema (~0.15 s of CPU).
# Definitions are frozen, so the same ones can back every Registry; a changed file is read anew.
_PARSED: dict[tuple[str, int, int], list[Definition]] = {}


def _definitions_file(f: Path) -> list[Definition]:
    st = f.stat()
    key = (str(f), st.st_mtime_ns, st.st_size)
    got = _PARSED.get(key)
    if got is None:
        got = parse_definitions(f.read_text(encoding="utf-8"), str(f))
        if len(_PARSED) > 256:
            _PARSED.clear()
        _PARSED[key] = got
    return list(got)
