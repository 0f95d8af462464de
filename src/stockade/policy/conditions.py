"""Rule conditions: compiled once at load into small closures, evaluated per call.

A condition returns True/False or raises `CannotEvaluate` (missing or mistyped argument). The
engine turns "cannot evaluate" into a verdict that never loosens anything (DESIGN.md §5); any
other exception raised here is treated the same way (fail closed).

Paths are canonicalised *lexically* inside the sandbox view: a relative path is relative to
/workspace and `..` is resolved without touching the disk. Symlinks cannot be resolved here (the
gateway does not see the agent's view); the sandbox resolves them at execution time, where
Landlock and the mount layout confine whatever a link points to.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

try:  # Python 3.11+: the parser moved; the old name still works but warns.
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

Cond = Callable[[str, str, dict[str, Any]], bool]   # (agent, capability, args) -> matched

WORKSPACE = "/workspace"
PATH_ARGS = ("path", "source", "destination", "cwd")
MAX_REGEX = 1000
MAX_MATCH_INPUT = 1 << 20   # argv longer than this (joined) cannot be evaluated: fail closed


class CannotEvaluate(Exception):  # noqa: N818 - a verdict, not a crash
    """The call's arguments do not let this condition be decided."""


# -- paths --------------------------------------------------------------------------------------
def canon_path(p: Any) -> str:
    """Canonical absolute path inside the sandbox view (lexical: `..`, `.`, `//` resolved)."""
    if not isinstance(p, str) or not p or "\x00" in p:
        raise CannotEvaluate("path is not a non-empty string")
    if not p.startswith("/"):
        p = f"{WORKSPACE}/{p}"
    p = posixpath.normpath(p)
    if p.startswith("//"):
        p = "/" + p.lstrip("/")
    return p


def is_under(path: str, base: str) -> bool:
    """`path` equals `base` or lies below it (both canonical)."""
    return base == "/" or path == base or path.startswith(base + "/")


def _paths(args: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return [canon_path(args[n]) for n in names if n in args]


# -- regex safety -------------------------------------------------------------------------------
def _unbounded(op: Any, av: Any) -> bool:
    return str(op) in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[1] > 1


def _walk(items: Any, in_repeat: bool) -> str | None:
    """Find constructs that make backtracking super-linear (star height > 1, ambiguous branch)."""
    for op, av in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "backreferences are not allowed"
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            rep = av[1] > 1
            if rep and in_repeat:
                return "nested quantifiers (e.g. (a+)+) can take exponential time"
            if rep and _branch_ambiguous(av[2]):
                return "a repeated alternation with overlapping branches can take exponential time"
            if rep and _nullable(av[2]):
                return "a repeated sub-pattern that can match the empty string can take exponential time"
            bad = _walk(av[2], in_repeat or rep)
            if bad:
                return bad
        elif name == "SUBPATTERN":
            bad = _walk(av[-1], in_repeat)
            if bad:
                return bad
        elif name == "BRANCH":
            for alt in av[1]:
                bad = _walk(alt, in_repeat)
                if bad:
                    return bad
        elif name in ("ASSERT", "ASSERT_NOT"):
            bad = _walk(av[1], in_repeat)
            if bad:
                return bad
    return None


def _first(items: Any) -> Any:
    items = list(items)
    while items and str(items[0][0]) == "SUBPATTERN":
        items = list(items[0][1][-1])
    if not items:
        return ("EMPTY", None)
    op, av = items[0]
    if str(op) == "LITERAL":
        return ("LITERAL", av)
    return ("ANY", None)


def _branch_ambiguous(items: Any) -> bool:
    """A BRANCH in a repeated body whose alternatives can start the same way (or be empty)."""
    for op, av in items:
        name = str(op)
        if name == "SUBPATTERN":
            if _branch_ambiguous(av[-1]):
                return True
        elif name == "BRANCH":
            firsts = [_first(alt) for alt in av[1]]
            if any(f[0] in ("EMPTY", "ANY") for f in firsts) or len(set(firsts)) != len(firsts):
                return True
    return False


def _nullable(items: Any) -> bool:
    """Can this sequence match the empty string? (A repeated nullable body backtracks wildly.)"""
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if av[0] > 0 and not _nullable(av[2]):
                return False
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            if not _nullable(av[-1]):
                return False
        elif name == "BRANCH":
            if not any(_nullable(alt) for alt in av[1]):
                return False
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            return False
    return True


def compile_regex(pattern: Any) -> re.Pattern[str]:
    """Compile an owner's regex, refusing invalid and catastrophic ones (ValueError says why)."""
    if not isinstance(pattern, str):
        raise ValueError("expected a regular expression string")
    if len(pattern) > MAX_REGEX:
        raise ValueError(f"regular expression longer than {MAX_REGEX} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            rx = re.compile(pattern)
            parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"invalid regular expression: {e}") from None
    bad = _walk(list(parsed), False)
    if bad:
        raise ValueError(f"refused regular expression {pattern!r}: {bad}")
    return rx


# -- compilation ---------------------------------------------------------------------------------
def _str_list(v: Any, what: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"{what}: expected a string or a non-empty list of strings")
    return list(v)


def _base_paths(v: Any, what: str, ctx: dict[str, str]) -> tuple[str, ...]:
    out = []
    for p in _str_list(v, what):
        p = p.replace("{home}", ctx.get("home", "/var/lib/stockade"))
        if not p.startswith("/"):
            raise ValueError(f"{what}: {p!r} must be an absolute path (inside the sandbox view)")
        out.append(canon_path(p))
    return tuple(out)


def _size(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{what}: expected a non-negative integer (bytes)")
    return v


def _content_len(args: dict[str, Any]) -> int:
    c = args.get("content")
    if not isinstance(c, str):
        raise CannotEvaluate("content missing or not a string")
    return len(c.encode("utf-8", "surrogatepass"))


def _argv_text(args: dict[str, Any]) -> str:
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise CannotEvaluate("argv missing or not a list of strings")
    text = " ".join(argv)
    if len(text) > MAX_MATCH_INPUT:
        raise CannotEvaluate("argv too long to match")
    return text


def _host(args: dict[str, Any]) -> str:
    url = args.get("url")
    if not isinstance(url, str):
        raise CannotEvaluate("url missing or not a string")
    try:
        host = urlsplit(url).hostname
    except ValueError:
        raise CannotEvaluate("url cannot be parsed") from None
    if not host:
        raise CannotEvaluate("url has no host")
    return host.rstrip(".").lower()


def _same(a: Any, b: Any) -> bool:
    """JSON equality that does not confuse true with 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# Arguments each condition reads (for `policy validate` warnings).
CONDITION_ARGS: dict[str, tuple[str, ...]] = {
    "path_under": PATH_ARGS, "path_outside": PATH_ARGS, "path_touches": PATH_ARGS, "path_glob": PATH_ARGS,
    "content_size_lt": ("content",), "content_size_gte": ("content",), "argv_match": ("argv",),
    "url_host_in": ("url",),
}
KEYS = ("path_under", "path_outside", "path_touches", "path_glob", "path_args", "content_size_lt",
        "content_size_gte", "arg_equals", "argv_match", "url_host_in", "arg_not_caller", "name_match", "not")


def compile_when(when: Any, ctx: dict[str, str] | None = None, where: str = "when") -> Cond | None:
    """`when:` mapping -> one closure (all conditions must hold). ValueError names the key."""
    ctx = ctx or {}
    if when is None or when == {}:
        return None
    if not isinstance(when, dict):
        raise ValueError(f"{where}: expected a mapping of conditions")
    unknown = sorted(set(when) - set(KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown condition (known: {', '.join(KEYS)})")
    path_args: tuple[str, ...] = PATH_ARGS
    if "path_args" in when:
        path_args = tuple(_str_list(when["path_args"], f"{where}.path_args"))
        if not any(k.startswith("path_") and k != "path_args" for k in when):
            raise ValueError(f"{where}.path_args: only meaningful with a path_* condition")
    conds: list[Cond] = []
    for key in KEYS:
        if key not in when or key == "path_args":
            continue
        v = when[key]
        w = f"{where}.{key}"
        try:
            conds.append(_one(key, v, w, path_args, ctx))
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(w) else f"{w}: {msg}") from None
    if len(conds) == 1:
        return conds[0]
    cs = tuple(conds)

    def all_of(agent: str, cap: str, args: dict[str, Any]) -> bool:
        # A definite False wins over "cannot evaluate" (the rule surely does not match), so the
        # result does not depend on the order of the conditions.
        failed: BaseException | None = None
        for c in cs:
            try:
                if not c(agent, cap, args):
                    return False
            except Exception as e:  # noqa: BLE001 - any evaluation error fails closed
                failed = e
        if failed is not None:
            raise CannotEvaluate(str(failed))
        return True

    return all_of


def _one(key: str, v: Any, w: str, path_args: tuple[str, ...], ctx: dict[str, str]) -> Cond:
    if key in ("path_under", "path_outside", "path_touches"):
        bases = _base_paths(v, w, ctx)

        def under_any(p: str) -> bool:
            return any(is_under(p, b) for b in bases)

        if key == "path_under":
            def path_under(agent: str, cap: str, args: dict[str, Any]) -> bool:
                ps = _paths(args, path_args)
                if not ps:
                    raise CannotEvaluate("no path argument")
                return all(under_any(p) for p in ps)
            return path_under
        if key == "path_outside":
            def path_outside(agent: str, cap: str, args: dict[str, Any]) -> bool:
                ps = _paths(args, path_args)
                if not ps:
                    raise CannotEvaluate("no path argument")
                return not all(under_any(p) for p in ps)
            return path_outside

        def path_touches(agent: str, cap: str, args: dict[str, Any]) -> bool:
            return any(under_any(p) for p in _paths(args, path_args))   # no path: touches nothing
        return path_touches
    if key == "path_glob":
        globs = []
        for g in _str_list(v, w):
            g = g.replace("{home}", ctx.get("home", "/var/lib/stockade"))
            if not g.startswith(("/", "*")):
                g = f"{WORKSPACE}/{g}"
            globs.append(re.compile(fnmatch.translate(g)))

        def path_glob(agent: str, cap: str, args: dict[str, Any]) -> bool:
            ps = _paths(args, path_args)
            if not ps:
                raise CannotEvaluate("no path argument")
            return all(any(g.match(p) for g in globs) for p in ps)
        return path_glob
    if key in ("content_size_lt", "content_size_gte"):
        n = _size(v, w)
        if key == "content_size_lt":
            return lambda agent, cap, args: _content_len(args) < n
        return lambda agent, cap, args: _content_len(args) >= n
    if key == "arg_equals":
        if not isinstance(v, dict) or not v or not all(isinstance(k, str) for k in v):
            raise ValueError(f"{w}: expected a mapping {{argument: value}}")
        items = tuple(v.items())

        def arg_equals(agent: str, cap: str, args: dict[str, Any]) -> bool:
            for name, want in items:
                if name not in args:
                    raise CannotEvaluate(f"argument {name} missing")
                if not _same(args[name], want):
                    return False
            return True
        return arg_equals
    if key == "argv_match":
        rx = compile_regex(v.replace("{home_re}", re.escape(ctx.get("home", "/var/lib/stockade")))
                           if isinstance(v, str) else v)
        return lambda agent, cap, args: rx.search(_argv_text(args)) is not None
    if key == "url_host_in":
        hosts = [h.rstrip(".").lower() for h in _str_list(v, w)]
        exact = frozenset(h for h in hosts if not h.startswith("*."))
        suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

        def url_host_in(agent: str, cap: str, args: dict[str, Any]) -> bool:
            h = _host(args)
            return h in exact or (bool(suffixes) and h.endswith(suffixes))
        return url_host_in
    if key == "arg_not_caller":
        names = tuple(_str_list(v, w))

        def arg_not_caller(agent: str, cap: str, args: dict[str, Any]) -> bool:
            for n in names:
                if n in args:
                    if not isinstance(args[n], str):
                        raise CannotEvaluate(f"argument {n} is not a string")
                    if args[n] != agent:
                        return True
            return False
        return arg_not_caller
    if key == "name_match":
        rx = compile_regex(v)
        return lambda agent, cap, args: rx.fullmatch(cap) is not None
    if key == "not":
        inner = compile_when(v, ctx, w)
        if inner is None:
            raise ValueError(f"{w}: expected a non-empty mapping of conditions")
        return lambda agent, cap, args: not inner(agent, cap, args)
    raise ValueError(f"{w}: unknown condition")  # pragma: no cover


def args_read(when: Any) -> dict[str, tuple[str, ...]]:
    """Condition key -> the arguments it reads (one of them must exist), for validation warnings."""
    out: dict[str, tuple[str, ...]] = {}
    if not isinstance(when, dict):
        return out
    path_args = tuple(when["path_args"]) if isinstance(when.get("path_args"), list) else \
        (when["path_args"],) if isinstance(when.get("path_args"), str) else PATH_ARGS
    for k, v in when.items():
        if k in ("path_under", "path_outside", "path_glob"):
            out[k] = path_args
        elif k in CONDITION_ARGS:
            out[k] = CONDITION_ARGS[k]
        elif k == "arg_equals" and isinstance(v, dict):
            for name in v:
                out[f"arg_equals.{name}"] = (str(name),)
        elif k == "not":
            out.update({f"not.{kk}": vv for kk, vv in args_read(v).items()})
    return out
