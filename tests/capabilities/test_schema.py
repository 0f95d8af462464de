"""The compiled schema check (capabilities.schema) gives jsonschema's answer, or none.

A compiled check that accepted what jsonschema refuses would let a malformed call or result
through, so the property tests here compare the two on values generated from every built-in
schema (mostly near-valid, so both answers are exercised) and on arbitrary JSON.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.capabilities.registry import load_registry, parse_definitions
from stockade.capabilities.schema import compile_schema

VAULT_DEFS = Path(__file__).resolve().parents[2] / "src" / "stockade" / "vault" / "capabilities.yaml"


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    defs = load_registry().all() + parse_definitions(VAULT_DEFS.read_text(), str(VAULT_DEFS))
    return [(f"{d.name}.{io}", s) for d in defs for io, s in (("input", d.input_schema), ("output", d.output_schema))]


SCHEMAS = _schemas()

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=12),
                         st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 1, 1.0, -1, 0.5, ""]))
any_json = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def near(schema: Any) -> st.SearchStrategy[Any]:
    """Values shaped by `schema`: each node is valid for its sub-schema, except that now and then
    one is anything at all (a wrong type, a missing or extra key, one item too many). Most values
    are valid, so the compiled check's "accept" answer, the one that matters, is exercised."""
    return st.integers(0, 24).flatmap(lambda i: any_json if i == 0 else _node(schema))


def _node(schema: Any) -> st.SearchStrategy[Any]:
    if not isinstance(schema, dict):
        return any_json
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or ["any"]
    return st.sampled_from(types).flatmap(lambda t: _typed(schema, t))


def _typed(schema: dict[str, Any], t: str) -> st.SearchStrategy[Any]:
    if t == "object":
        props, required = schema.get("properties", {}), schema.get("required", [])
        subs = {k: near(v) for k, v in props.items()}
        extra = schema.get("additionalProperties", True)
        optional = {k: s for k, s in subs.items() if k not in required}
        if extra is not False:
            names = schema.get("propertyNames", {}).get("pattern")
            key = st.from_regex(names, fullmatch=True) if names else st.just("zz_extra")
            value = any_json if extra is True else near(extra)
            return st.tuples(st.fixed_dictionaries({k: s for k, s in subs.items() if k in required},
                                                   optional=optional),
                             st.dictionaries(key, value, max_size=2)).map(lambda kv: {**kv[1], **kv[0]})
        return st.fixed_dictionaries({k: s for k, s in subs.items() if k in required}, optional=optional)
    if t == "array":
        lo = schema.get("minItems", 0)
        return st.lists(near(schema.get("items", {})), min_size=lo, max_size=min(schema.get("maxItems", 4), lo + 4))
    if t == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 12)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"]).filter(lambda x: lo <= len(x) <= hi)
        short = st.text(min_size=lo, max_size=min(hi, lo + 12))
        return st.one_of(short, st.text(min_size=hi, max_size=hi)) if hi <= 64 else short
    if t in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10**6))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 10**6))
        ints = st.integers(int(lo), int(hi))
        if t == "integer":
            return st.one_of(ints, ints.map(float))
        return st.one_of(ints, st.floats(lo, hi, allow_nan=False))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    return any_json


@pytest.mark.parametrize("name,schema", SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_every_builtin_schema_compiles(name: str, schema: dict[str, Any]) -> None:
    # A keyword outside the plain subset (or a YAML slip: an unquoted ", " inside a flow mapping
    # turns a description into stray keywords) would silently cost every call jsonschema's walk.
    assert compile_schema(schema) is not None, name


@pytest.mark.parametrize("name,schema", SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_builtin_schemas_agree_with_jsonschema(name: str, schema: dict[str, Any]) -> None:
    check = compile_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    assert check is not None

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(near(schema))
    def agree(value: Any) -> None:
        assert check(value) == validator.is_valid(value), value

    agree()


KEYWORD_SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer"}, {"type": "number"}, {"type": ["integer", "null"]}, {"type": "boolean"},
    {"type": "array", "items": {"type": "string", "maxLength": 2}, "minItems": 1, "maxItems": 2},
    {"items": False}, {"items": True}, {"type": "object", "additionalProperties": False},
    {"properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": {"type": "string"}},
    {"maxProperties": 1, "minProperties": 1}, {"propertyNames": {"pattern": "^[a-z]$"}},
    {"pattern": "b+"}, {"minLength": 1, "maxLength": 2}, {"enum": ["a", "b"]},
    {"minimum": 0, "maximum": 1.5}, {"exclusiveMinimum": 0, "exclusiveMaximum": 10}, {}, True, False,
]


@pytest.mark.parametrize("schema", KEYWORD_SCHEMAS, ids=[str(s)[:40] for s in KEYWORD_SCHEMAS])
@settings(max_examples=200, deadline=None)
@given(value=any_json)
def test_each_keyword_agrees_with_jsonschema(schema: Any, value: Any) -> None:
    check = compile_schema(schema)
    assert check is not None
    assert check(value) == jsonschema.Draft202012Validator(schema).is_valid(value)


def test_integer_and_number_edges() -> None:
    check = compile_schema({"type": "integer"})
    assert check is not None
    assert check(1.0) and check(-3) and not check(1.5) and not check(True) and not check("1")
    n = compile_schema({"type": "number", "maximum": 1})
    assert n is not None
    assert n(1) and n(0.5) and not n(1.5) and not n(False)


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": "uri"}, {"$ref": "#/$defs/x", "$defs": {"x": {}}}, {"anyOf": [{}]},
    {"enum": [1, "a"]}, {"const": 1}, {"uniqueItems": True}, {"properties": {"a": {"oneOf": []}}},
    {"type": "object", "x-vendor": 1}, {"type": "string", "maxLength": 1.5},
])
def test_anything_else_is_left_to_jsonschema(schema: Any) -> None:
    assert compile_schema(schema) is None


def test_values_json_never_holds_are_left_to_jsonschema() -> None:
    check = compile_schema({"type": "object"})
    assert check is not None
    assert not check((1,)) and not check(Decimal(1))
    assert not check(type("D", (dict,), {})())   # a dict subclass: jsonschema decides


def test_definition_reports_errors_through_jsonschema() -> None:
    d = load_registry().get("process.run")
    assert d.accepts is not None and d.output_accepts is not None
    assert d.input_errors({"argv": ["/bin/true"]}) == []
    errs = d.input_errors({"argv": [], "bogus": 1})
    assert {e.validator for e in errs} == {"minItems", "additionalProperties"}
    ok = {"exit_code": 0, "signal": None, "stdout": "", "stderr": "", "stdout_truncated": False,
          "stderr_truncated": False, "duration_ms": 1}
    assert d.output_valid(ok)
    assert not d.output_valid({**ok, "exit_code": "0"})
    assert not d.output_valid({k: v for k, v in ok.items() if k != "stdout"})
