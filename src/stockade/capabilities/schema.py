"""A fast acceptance check for the JSON Schemas capability definitions use.

Every call's arguments, and every sandboxed call's result, are checked against a JSON Schema.
`jsonschema` walks a schema generically (a validator object per keyword per level, error
generators, reference resolution): ~20 µs for `process.run`'s arguments and ~50 µs for its
result, more on a loaded machine, on the hot path of every call. `compile_schema` turns a Draft
2020-12 schema that uses only the plain keywords below into nested closures doing the same
checks directly.

It only ever *accepts*: `accepts(x)` True means jsonschema would find no error either (the
property test in tests/capabilities/test_schema.py checks both agree, for every built-in schema).
False, or a schema using any keyword outside the subset (None: not compiled), sends the value to
jsonschema, which stays the one judge of what is refused and says why. So nothing is
checked less: a compiled schema is a shortcut to the answer jsonschema gives, never another answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

# Keywords with no effect on validity (annotations).
_ANNOTATIONS = frozenset({"description", "default", "title", "examples", "$comment", "deprecated",
                          "readOnly", "writeOnly"})
_KEYWORDS = frozenset({"type", "enum", "properties", "required", "additionalProperties", "maxProperties",
                       "minProperties", "propertyNames", "items", "minItems", "maxItems", "minLength",
                       "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
# The exact types a JSON document decodes to. Anything else (a Decimal, a tuple, a dict subclass
# with its own idea of equality) is left to jsonschema.
_JSON_TYPES = (dict, list, str, int, float, bool, type(None))


class _Unsupported(Exception):
    pass


def compile_schema(schema: Any) -> Check | None:
    """`schema` as a predicate that is True only where jsonschema's Draft 2020-12 `is_valid` is;
    None when the schema uses anything outside the plain subset (then use jsonschema alone)."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if schema is True:
        return _always
    if schema is False:
        return _never
    if not isinstance(schema, dict) or not (set(schema) <= _KEYWORDS | _ANNOTATIONS):
        raise _Unsupported
    checks: list[Check] = []
    if "type" in schema:
        checks.append(_type(schema["type"]))
    if "enum" in schema:
        checks.append(_enum(schema["enum"]))
    checks += _object(schema) + _array(schema) + _string(schema) + _number(schema)
    return _all(tuple(checks))


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _all(checks: tuple[Check, ...]) -> Check:
    if not checks:
        return _json
    if len(checks) == 1:
        only = checks[0]
        return lambda x: type(x) in _JSON_TYPES and only(x)
    return lambda x: type(x) in _JSON_TYPES and all(c(x) for c in checks)


def _json(x: Any) -> bool:
    return type(x) in _JSON_TYPES


def _is_int(x: Any) -> bool:
    # Draft 2020-12: an integer is any number with a zero fractional part (1.0 is one); never a bool.
    return (type(x) is int) or (type(x) is float and x.is_integer())


_TYPES: dict[str, Check] = {
    "null": lambda x: x is None,
    "boolean": lambda x: type(x) is bool,
    "integer": _is_int,
    "number": lambda x: type(x) is int or type(x) is float,
    "string": lambda x: type(x) is str,
    "array": lambda x: type(x) is list,
    "object": lambda x: type(x) is dict,
}


def _type(t: Any) -> Check:
    names = [t] if isinstance(t, str) else t
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in _TYPES for n in names):
        raise _Unsupported
    if len(names) == 1:
        return _TYPES[names[0]]
    tests = tuple(_TYPES[n] for n in names)
    return lambda x: any(f(x) for f in tests)


def _enum(values: Any) -> Check:
    # Strings only: a string equals only a string, with no bool/int/float subtleties.
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise _Unsupported
    allowed = frozenset(values)
    return lambda x: type(x) is str and x in allowed


def _count(schema: dict[str, Any], key: str) -> int | None:
    v = schema.get(key)
    if v is None:
        return None
    if type(v) is not int or v < 0:
        raise _Unsupported
    return v


def _object(schema: dict[str, Any]) -> list[Check]:
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _Unsupported
    subs = tuple((k, _compile(v)) for k, v in props.items())
    known = frozenset(props)
    extra_check = _compile(extra)
    names = _compile(schema["propertyNames"]) if "propertyNames" in schema else None
    most, least = _count(schema, "maxProperties"), _count(schema, "minProperties")
    need = tuple(required)
    if not (subs or need or extra is not True or names or most is not None or least is not None):
        return []

    def check(x: Any) -> bool:
        if type(x) is not dict:
            return True
        if (most is not None and len(x) > most) or (least is not None and len(x) < least):
            return False
        for k in need:
            if k not in x:
                return False
        for k, sub in subs:
            if k in x and not sub(x[k]):
                return False
        if extra_check is not _always:
            for k, v in x.items():
                if k not in known and not extra_check(v):
                    return False
        return names is None or all(names(k) for k in x)

    return [check]


def _array(schema: dict[str, Any]) -> list[Check]:
    items = _compile(schema["items"]) if "items" in schema else _always
    most, least = _count(schema, "maxItems"), _count(schema, "minItems")
    if items is _always and most is None and least is None:
        return []

    def check(x: Any) -> bool:
        if type(x) is not list:
            return True
        if (most is not None and len(x) > most) or (least is not None and len(x) < least):
            return False
        return items is _always or all(items(v) for v in x)

    return [check]


def _string(schema: dict[str, Any]) -> list[Check]:
    most, least = _count(schema, "maxLength"), _count(schema, "minLength")
    pattern = schema.get("pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise _Unsupported
    rx = re.compile(pattern) if pattern is not None else None
    if most is None and least is None and rx is None:
        return []

    def check(x: Any) -> bool:
        if type(x) is not str:
            return True
        if (most is not None and len(x) > most) or (least is not None and len(x) < least):
            return False
        return rx is None or rx.search(x) is not None

    return [check]


def _bound(schema: dict[str, Any], key: str) -> int | float | None:
    v = schema.get(key)
    if v is None:
        return None
    if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
        raise _Unsupported
    return v


def _number(schema: dict[str, Any]) -> list[Check]:
    lo, hi = _bound(schema, "minimum"), _bound(schema, "maximum")
    xlo, xhi = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if lo is None and hi is None and xlo is None and xhi is None:
        return []

    def check(x: Any) -> bool:
        if type(x) is not int and type(x) is not float:
            return True
        return not ((lo is not None and x < lo) or (hi is not None and x > hi)
                    or (xlo is not None and x <= xlo) or (xhi is not None and x >= xhi))

    return [check]


__all__ = ["Check", "compile_schema"]
