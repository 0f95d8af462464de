"""YAML loading that remembers where every value came from.

Owners edit stockade.yaml, policies and definitions by hand; an error must say `file:line`.
`load` returns plain data plus a map from a key path to its 1-based line, and `pydantic_errors`
turns a pydantic ValidationError into `file:line: message` strings using that map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stockade.core.errors import ConfigError

Lines = dict[tuple[Any, ...], int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a silent override hides mistakes)."""


def _construct(node: yaml.Node, path: tuple[Any, ...], lines: Lines, fname: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                raise ConfigError([f"{fname}:{knode.start_mark.line + 1}: merge keys (<<) are not supported"])
            key = _scalar(knode, fname)
            if key in out:
                raise ConfigError([f"{fname}:{knode.start_mark.line + 1}: duplicate key {key!r}"])
            out[key] = _construct(vnode, (*path, key), lines, fname)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), lines, fname) for i, v in enumerate(node.value)]
    return _scalar(node, fname)


def _scalar(node: yaml.Node, fname: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError([f"{fname}:{node.start_mark.line + 1}: expected a scalar key"])
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise ConfigError([f"{fname}:{node.start_mark.line + 1}: {e}"]) from None
    finally:
        loader.dispose()


def loads(text: str, fname: str = "<string>") -> tuple[Any, Lines]:
    """Parse YAML text; raise ConfigError with file:line on syntax errors or duplicate keys."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise ConfigError([f"{fname}:{line}: {e.problem or e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{fname}:0: {e}"]) from None
    lines: Lines = {}
    if node is None:
        return None, {(): 1}
    return _construct(node, (), lines, fname), lines


def load(path: Path) -> tuple[Any, Lines]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}:0: not UTF-8 text"]) from None
    return loads(text, str(path))


def line_of(lines: Lines, loc: tuple[Any, ...]) -> int:
    """The line of the deepest known prefix of `loc` (a missing key reports its parent)."""
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def pydantic_errors(exc: ValidationError, fname: str, lines: Lines, prefix: tuple[Any, ...] = ()) -> list[str]:
    out = []
    for e in exc.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        where = ".".join(str(x) for x in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{fname}:{line_of(lines, (*prefix, *loc))}: {where}: {msg}")
    return out
