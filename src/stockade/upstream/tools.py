"""An upstream server's tools as stockade capabilities (pure).

Each MCP tool `t` of server `s` becomes the capability `s.t` with the tool's own input schema,
so the pipeline validates arguments, policy decides on them and the audit log records them
exactly as for a built-in. Tool names that are not capability names are mapped (lower case,
`-` -> `_`); a name two tools would share, a schema that is not a JSON Schema object, or one
that refers outside itself (`$ref` to a URL) is left out and reported. Everything a server says
is untrusted: descriptions and schemas are bounded in size.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from stockade.capabilities.registry import Definition
from stockade.core.types import CAPABILITY_NAME_PATTERN

MAX_SCHEMA_BYTES = 64 * 1024
MAX_TEXT = 1000
MAX_TOOLS = 256
EXECUTION = "upstream"

# What an upstream call returns to the agent: the MCP content blocks, structured content when the
# server gives it, and whether the server said the call failed (a tool error is the tool's answer).
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["content", "is_error"],
    "properties": {
        "content": {"type": "array", "items": {"type": "object"}},
        "structured": {"type": "object"},
        "is_error": {"type": "boolean"},
    },
}
ERRORS = ("InvalidInput", "Timeout", "ResourceExhausted", "SandboxUnavailable", "Unreachable", "Internal")
_NAME = re.compile(CAPABILITY_NAME_PATTERN)


@dataclass(frozen=True)
class Mirrored:
    """One server's tools as definitions, the upstream tool name of each, and what was left out."""

    definitions: tuple[Definition, ...]
    tool_of: dict[str, str]
    skipped: tuple[str, ...]


def capability_name(server: str, tool: str) -> str | None:
    name = f"{server}.{tool.lower().replace('-', '_')}"
    return name if _NAME.match(name) and len(name) <= 128 else None


def _schema_problem(schema: Any) -> str | None:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "input schema is not an object schema"
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError):
        return "input schema is not JSON"
    if len(text) > MAX_SCHEMA_BYTES:
        return f"input schema larger than {MAX_SCHEMA_BYTES} bytes"
    if re.search(r'"\$(ref|dynamicRef)"\s*:\s*"(?!#)', text):
        return "input schema refers outside itself"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"invalid JSON Schema: {e.message[:200]}"
    return None


def definition(server: str, name: str, tool: dict[str, Any]) -> Definition:
    """Pure: one (checked) MCP tool -> its capability definition."""
    schema = tool["inputSchema"]
    ann = tool.get("annotations") or {}
    read_only = ann.get("readOnlyHint") is True
    text = str(tool.get("description") or tool.get("title") or tool["name"]).strip()[:MAX_TEXT] or tool["name"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return Definition(
        name=name, version=1, purpose=text,
        when_to_use=f"A tool of the upstream MCP server {server!r} ({tool['name']}), run in its sandbox.",
        execution=EXECUTION, side_effects=not read_only,
        default_tier="notify" if read_only else "approval_required", secrets=False,
        input_schema=schema, output_schema=RESULT_SCHEMA, errors=ERRORS, source=f"upstream:{server}",
        validator=cls(schema, format_checker=jsonschema.FormatChecker()),
        output_validator=jsonschema.Draft202012Validator(RESULT_SCHEMA),
    )


def mirror(server: str, tools: list[dict[str, Any]]) -> Mirrored:
    """Pure: a server's tools/list -> definitions (sorted), the tool name behind each, what was skipped."""
    defs: dict[str, Definition] = {}
    tool_of: dict[str, str] = {}
    skipped: list[str] = []
    seen: set[str] = set()
    for tool in tools[:MAX_TOOLS]:
        raw = str(tool.get("name", ""))[:200]
        name = capability_name(server, raw) if raw else None
        problem = None if name else "name is not usable as a capability name"
        if name and name in seen:
            problem = f"two tools map to {name}"
            defs.pop(name, None)
            tool_of.pop(name, None)
        problem = problem or _schema_problem(tool.get("inputSchema"))
        if name:
            seen.add(name)
        if problem:
            skipped.append(f"{raw!r}: {problem}")
            continue
        assert name is not None  # noqa: S101
        defs[name] = definition(server, name, tool)
        tool_of[name] = raw
    if len(tools) > MAX_TOOLS:
        skipped.append(f"{len(tools) - MAX_TOOLS} tools past the first {MAX_TOOLS}")
    return Mirrored(tuple(defs[n] for n in sorted(defs)), tool_of, tuple(skipped))


def shape_result(result: dict[str, Any], max_bytes: int) -> tuple[dict[str, Any], int]:
    """Pure: an MCP CallToolResult (as JSON) -> the agent's result and its encoded size.

    Only content blocks that are JSON objects and a structured object pass; the size is checked
    by the caller against the server's bound."""
    content = [c for c in (result.get("content") or []) if isinstance(c, dict)]
    out: dict[str, Any] = {"content": content, "is_error": bool(result.get("isError"))}
    if isinstance(result.get("structuredContent"), dict):
        out["structured"] = result["structuredContent"]
    size = len(json.dumps(out, separators=(",", ":"), default=str))
    return out, size
