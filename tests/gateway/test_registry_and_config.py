"""Definitions are data, implementations are functions; each refused without the other.
Owner-written YAML errors carry file:line."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.capabilities.registry import Registry, load_registry, parse_definitions
from stockade.core.config import load_config
from stockade.core.errors import ConfigError

GOOD = """\
capabilities:
  - name: demo.echo
    purpose: Echo.
    when_to_use: Testing.
    input: {type: object, properties: {x: {type: string}}, additionalProperties: false}
    output: {type: object}
"""


def test_builtin_registry_loads() -> None:
    reg = load_registry()
    names = {d.name for d in reg.all()}
    assert {"system.time", "system.info", "system.health", "agent.whoami", "agent.capabilities"} <= names
    assert reg.get("system.time").tool_name == "system__time"


def test_definition_without_implementation_is_refused() -> None:
    defs = parse_definitions(GOOD, "demo.yaml")
    with pytest.raises(ConfigError, match="definition has no implementation"):
        Registry(defs, {})


def test_implementation_without_definition_is_refused() -> None:
    with pytest.raises(ConfigError, match="implementation has no definition"):
        Registry([], {"demo.echo": lambda ctx, a: {}})


def test_definition_errors_have_file_and_line() -> None:
    bad = GOOD.replace("    purpose: Echo.\n", "    purpose: Echo.\n    colour: blue\n")
    with pytest.raises(ConfigError) as ei:
        parse_definitions(bad, "demo.yaml")
    assert any(e.startswith("demo.yaml:4:") and "unknown key" in e for e in ei.value.errors), ei.value.errors


def test_invalid_json_schema_is_refused_with_line() -> None:
    bad = GOOD.replace("{x: {type: string}}", "{x: {type: strin}}")
    with pytest.raises(ConfigError) as ei:
        parse_definitions(bad, "demo.yaml")
    assert "invalid JSON Schema" in ei.value.errors[0] and ei.value.errors[0].startswith("demo.yaml:5:")


def test_duplicate_yaml_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key"):
        parse_definitions(GOOD + "capabilities: []\n", "demo.yaml")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_definition_loader_only_raises_config_errors(text: str) -> None:
    try:
        parse_definitions(text, "fuzz.yaml")
    except ConfigError as e:
        assert all(isinstance(x, str) and x.startswith("fuzz.yaml:") for x in e.errors)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["capabilities:", "  - name: a.b", "    purpose: p", "    when_to_use: w",
                                 "    input: {type: object}", "    output: {}", "    input: [1", "  -", "    x: 1",
                                 "    default_tier: nope", "\t"]), max_size=12))
def test_fuzz_definition_loader_structured(lines: list[str]) -> None:
    with contextlib.suppress(ConfigError):
        parse_definitions("\n".join(lines), "fuzz.yaml")


def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "stockade.yaml"
    p.write_text("version: 1\ngateway:\n  port: 7700\n  prot: 1\naudit:\n  fail_mode: explode\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    errs = "\n".join(ei.value.errors)
    assert f"{p}:4: gateway.prot: unknown key" in errs
    assert f"{p}:6: audit.fail_mode" in errs


def test_config_syntax_error_has_line(tmp_path: Path) -> None:
    p = tmp_path / "stockade.yaml"
    p.write_text("version: 1\ngateway: [\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.errors[0].startswith(f"{p}:")
