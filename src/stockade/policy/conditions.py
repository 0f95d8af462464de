"""Rule conditions: compiled once at load into small closures, evaluated per call.

A condition returns True/False or raises `CannotEvaluate` (missing or mistyped argument). The
engine turns "cannot evaluate" into a verdict that never loosens anything (docs/design.md "Policy"); any
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
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import re2

from stockade.core.errors import StockadeError
from stockade.core.urls import parse_ipv4, parse_url
from stockade.policy.facts import DEFAULT_FACTS, PATH_ARGS, Facts, PathScope, Reach

Cond = Callable[[str, str, dict[str, Any]], bool]   # (agent, capability, args) -> matched

WORKSPACE = "/workspace"
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
    return str(p)


def is_under(path: str, base: str) -> bool:
    """`path` equals `base` or lies below it (both canonical)."""
    return base == "/" or path == base or path.startswith(base + "/")


class CallArgs(dict):  # type: ignore[type-arg]
    """One call's arguments while one decision is made, with what conditions derive from them
    (the joined argv, canonical paths) computed once instead of once per rule that reads it.
    A copy made for the evaluation: nothing can change the arguments while the memo lives."""

    __slots__ = ("memo",)

    def __init__(self, args: dict[str, Any]):
        super().__init__(args)
        self.memo: dict[Any, Any] = {}

    @classmethod
    def of(cls, args: dict[str, Any]) -> dict[str, Any]:
        """`args` for one evaluation: plain dicts get a memo; anything else is used as it is."""
        return cls(args) if type(args) is dict else args


def _memo(args: dict[str, Any], key: Any, compute: Callable[[dict[str, Any]], Any]) -> Any:
    """`compute(args)`, once per evaluation when `args` is a CallArgs. A CannotEvaluate is
    remembered too and raised anew for each condition that asks."""
    if type(args) is not CallArgs:
        return compute(args)
    memo = args.memo
    if key not in memo:
        try:
            memo[key] = compute(args)
        except CannotEvaluate as e:
            memo[key] = _Failed(str(e))
    got = memo[key]
    if type(got) is _Failed:
        raise CannotEvaluate(got.why)
    return got


@dataclass(frozen=True)
class _Failed:
    why: str


def _paths(args: dict[str, Any], names: tuple[str, ...], scope: PathScope | None = None) -> list[tuple[str, bool]]:
    """(canonical path, acts below it) for each path argument; an omitted argument takes its schema
    default (`path: "."` is the whole workspace), so leaving a path out never escapes a rule."""
    return _memo(args, ("paths", names, id(scope)), lambda a: _canon_paths(a, names, scope))  # type: ignore[no-any-return]


def _canon_paths(args: dict[str, Any], names: tuple[str, ...], scope: PathScope | None) -> list[tuple[str, bool]]:
    out = []
    for n in names:
        if n in args:
            v = args[n]
        elif scope is not None and isinstance(scope.defaults.get(n), str):
            v = scope.defaults[n]
        else:
            continue
        out.append((canon_path(v), scope is not None and scope.subtree(n, args)))
    return out


def _glob_prefix(glob: str) -> str:
    """The literal part of a glob before its first wildcard."""
    cut = [i for i in (glob.find("*"), glob.find("?"), glob.find("[")) if i != -1]
    return glob[:min(cut)] if cut else glob


_PROBES = ("/\x01", "/\x01\x02/\x03\x04\x05")


def _glob_below(glob: str, rx: re.Pattern[str], p: str) -> bool | None:
    """Does the glob match everything at and below `p` (True), nothing there (False), or some of
    it (None: cannot be decided without listing the tree)?"""
    if rx.match(p) and all(rx.match(p + probe) for probe in _PROBES):
        return True
    lit = _glob_prefix(glob)
    if not rx.match(p) and lit and not lit.startswith(p + "/") and not (p + "/").startswith(lit):
        return False
    return None


# -- regexes -------------------------------------------------------------------------------------
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False       # RE2 would print every refused pattern on stderr


def compile_regex(pattern: Any) -> Any:
    """Compile an owner's regex with RE2 (an `re2._Regexp`: `.search`, `.fullmatch`, `.pattern`).

    Why RE2: the text matched is the agent's (a joined argv of up to MAX_MATCH_INPUT), and the
    patterns are the owner's and ours. Python's backtracking `re` spent seconds of the event loop,
    which every agent shares, on one 1 MiB argv against the shipped system rules, even with every
    repeat bounded; RE2 matches in time linear in the text whatever the pattern, so no pattern
    needs refusing for its shape. Its syntax has no backreferences or lookaround, `\\w`, `\\s` and
    `\\b` are ASCII, and `$` matches only at the very end: such a pattern is refused at load
    with RE2's reason (ValueError)."""
    if not isinstance(pattern, str):
        raise ValueError("expected a regular expression string")
    if len(pattern) > MAX_REGEX:
        raise ValueError(f"regular expression longer than {MAX_REGEX} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"invalid regular expression (RE2 syntax: no backreferences or lookaround): {why}") from None


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
    return _memo(args, "argv", _join_argv)  # type: ignore[no-any-return]


def _join_argv(args: dict[str, Any]) -> str:
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise CannotEvaluate("argv missing or not a list of strings")
    text = " ".join(argv)
    if len(text) > MAX_MATCH_INPUT:
        raise CannotEvaluate("argv too long to match")
    return text


# -- hosts ---------------------------------------------------------------------------------------
def _target(args: dict[str, Any]) -> str:
    """The host the request will connect to, spelled as egress will spell it (lower case, no
    trailing dot, canonical dotted quad). Spellings egress refuses (userinfo, IPv6, decimal or
    octal addresses, IDN) cannot be evaluated: the call fails closed here and is refused there."""
    url = args.get("url")
    if not isinstance(url, str):
        raise CannotEvaluate("url missing or not a string")
    try:
        return parse_url(url).host
    except StockadeError as e:
        raise CannotEvaluate(f"url refused: {e.message}") from None


def _follows_redirects(args: dict[str, Any]) -> bool:
    return args.get("follow_redirects", True) is not False and args.get("max_redirects", 5) != 0


class HostList:
    """`url_host_in` entries: exact names, `*.suffix` names, IPv4 addresses."""

    def __init__(self, hosts: list[str]):
        self.names: set[str] = set()
        self.suffixes: tuple[str, ...] = ()
        self.ips: set[str] = set()
        sfx = []
        for h in hosts:
            h = h.rstrip(".").lower()
            ip = parse_ipv4(h)
            if ip is not None:
                self.ips.add(str(ip))
            elif h.startswith("*."):
                sfx.append(h[1:])
            else:
                self.names.add(h)
        self.suffixes = tuple(sfx)

    def name(self, n: str) -> bool:
        return n in self.names or (bool(self.suffixes) and n.endswith(self.suffixes))

    def identities(self, host: str, reach: Reach | None) -> bool:
        """Is `host` (a name or an address) listed, directly or through what it resolves to?"""
        if parse_ipv4(host) is not None:
            if host in self.ips:
                return True
            if reach is None:
                if self.names or self.suffixes:
                    raise CannotEvaluate("an IP address whose hostname is not known here")
                return False
            return any(self.name(n) for n in reach.names_for(host))
        if self.name(host):
            return True
        if not self.ips:
            return False
        if reach is None:
            raise CannotEvaluate("a hostname whose addresses are not known here")
        return any(a in self.ips for a in reach.names.get(host, ()))

    def net(self, net: Any, reach: Reach) -> set[bool]:
        """What an address inside an explicit egress cidr entry can be: listed, not listed, both."""
        if net.num_addresses == 1:
            return {self.identities(str(net.network_address), reach)}
        inside = [a for a in self.ips if parse_ipv4(a) in net]
        inside += [a for n, addrs in reach.names.items() if self.name(n) for a in addrs if parse_ipv4(a) in net]
        return {False, True} if inside else {False}

    def decide(self, args: dict[str, Any], reach: Reach | None) -> bool:
        """Listed for every place the request can reach (True), none (False), else cannot say."""
        values = {self.identities(_target(args), reach)}
        if _follows_redirects(args):
            if reach is None:
                raise CannotEvaluate("the request follows redirects and where it may go is not known here")
            for n in reach.names:
                values.add(self.identities(n, reach))
            for net in reach.nets:
                values |= self.net(net, reach)
        if len(values) > 1:
            raise CannotEvaluate("the request follows redirects to hosts both on and off the list "
                                 "(set follow_redirects: false to decide on the URL's host)")
        return values.pop()


# -- what runs ------------------------------------------------------------------------------------
# Environment variables that cannot change which program runs or what code it loads, with plain
# values (no "/" or ":": a locale, terminal or zone given as a path makes programs load files).
# Everything else (LD_*, PATH, BASH_ENV, ENV, PYTHON*, PERL5*, RUBYOPT, NODE_OPTIONS, GCONV_PATH,
# IFS, GIT_*, HOME, JAVA_TOOL_OPTIONS, ... and names no list could foresee) may, so an allowlist.
INERT_ENV = re.compile(r"^(LANG|LANGUAGE|LC_[A-Z]{1,20}|TERM|COLUMNS|LINES|NO_COLOR|FORCE_COLOR|CLICOLOR|"
                       r"CLICOLOR_FORCE|TZ|CI)$")
INERT_VALUE = re.compile(r"^[A-Za-z0-9_.,@+=-]{0,128}$")


def _env_risk(args: dict[str, Any], allowed: tuple[re.Pattern[str], ...]) -> str | None:
    """Why the call's `env` may change what runs (None: it cannot)."""
    env = args.get("env")
    if env is None:
        return None
    if not isinstance(env, dict):
        return "env is not a mapping"
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return "env names and values must be strings"
        if any(a.fullmatch(k) for a in allowed):
            continue
        if not (INERT_ENV.match(k) and INERT_VALUE.match(v)):
            return f"env sets {k[:64]}, which can change what runs (allow it with env_allow)"
    return None


def _cwd_risk(args: dict[str, Any]) -> str | None:
    """A relative program path (`./build.sh`, `bin/x`) names a different file in another cwd."""
    argv = args.get("argv")
    prog = argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) else ""
    if "/" not in prog or prog.startswith("/"):
        return None
    if canon_path(args.get("cwd", ".")) == WORKSPACE:
        return None
    return "a relative program path run from a cwd other than /workspace"


def _same(a: Any, b: Any) -> bool:
    """JSON equality that does not confuse true with 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


# Arguments each condition reads (for `policy validate` warnings).
CONDITION_ARGS: dict[str, tuple[str, ...]] = {
    "path_under": PATH_ARGS, "path_outside": PATH_ARGS, "path_touches": PATH_ARGS, "path_glob": PATH_ARGS,
    "content_size_lt": ("content",), "content_size_gte": ("content",), "argv_match": ("argv",),
    "url_host_in": ("url",),
}
KEYS = ("path_under", "path_outside", "path_touches", "path_glob", "path_args", "content_size_lt",
        "content_size_gte", "arg_equals", "arg_lt", "arg_gt", "arg_between", "argv_match", "env_allow",
        "url_host_in", "arg_not_caller", "name_match", "read_only_hint", "not")
NUMERIC = ("arg_lt", "arg_gt", "arg_between")
MODIFIERS = ("path_args", "env_allow")


@dataclass(frozen=True)
class Compile:
    """What compiling a rule's conditions needs besides the `when:` mapping."""

    ctx: dict[str, str]
    facts: Facts
    permissive: bool          # the rule's tier lets a call run without approval (autonomous, notify)
    negated: bool = False     # inside an odd number of `not:`
    path_args: tuple[str, ...] = PATH_ARGS
    env_allow: tuple[re.Pattern[str], ...] = ()
    cwd_checked: bool = False  # a path condition of the same rule reads cwd


def compile_when(when: Any, ctx: dict[str, str] | None = None, where: str = "when", *,
                 facts: Facts = DEFAULT_FACTS, permissive: bool = True, negated: bool = False) -> Cond | None:
    """`when:` mapping -> one closure (all conditions must hold). ValueError names the key.

    `permissive`: the rule would let a call run without approval. Such a rule decides on the
    command only when nothing else the call sets changes what runs (argv_match: env, cwd)."""
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
    env_allow: tuple[re.Pattern[str], ...] = ()
    if "env_allow" in when:
        if "argv_match" not in when:
            raise ValueError(f"{where}.env_allow: only meaningful with argv_match")
        names = _str_list(when["env_allow"], f"{where}.env_allow")
        if not all(re.fullmatch(r"[A-Za-z0-9_*?]{1,128}", n) for n in names):
            raise ValueError(f"{where}.env_allow: expected variable names (or globs like LC_*)")
        env_allow = tuple(re.compile(fnmatch.translate(n)) for n in names)
    cwd_checked = "cwd" in path_args and any(k in when for k in ("path_under", "path_glob"))
    c = Compile(ctx, facts, permissive, negated, path_args, env_allow, cwd_checked)
    conds: list[Cond] = []
    for key in KEYS:
        if key not in when or key in MODIFIERS:
            continue
        v = when[key]
        w = f"{where}.{key}"
        try:
            conds.append(_one(key, v, w, c))
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


def _one(key: str, v: Any, w: str, c: Compile) -> Cond:
    ctx, path_args, scope = c.ctx, c.path_args, c.facts.scope
    if key in ("path_under", "path_outside", "path_touches"):
        bases = _base_paths(v, w, ctx)

        def under_any(p: str) -> bool:
            return any(is_under(p, b) for b in bases)

        if key == "path_under":
            def path_under(agent: str, cap: str, args: dict[str, Any]) -> bool:
                ps = _paths(args, path_args, scope(cap))
                if not ps:
                    raise CannotEvaluate("no path argument")
                return all(under_any(p) for p, _ in ps)   # below a path under a base is under it
            return path_under
        if key == "path_outside":
            def path_outside(agent: str, cap: str, args: dict[str, Any]) -> bool:
                ps = _paths(args, path_args, scope(cap))
                if not ps:
                    raise CannotEvaluate("no path argument")
                return not all(under_any(p) for p, _ in ps)
            return path_outside

        def path_touches(agent: str, cap: str, args: dict[str, Any]) -> bool:
            # A call acting below p touches every base inside p too (search the workspace, move or
            # delete an ancestor). No path argument at all: touches nothing.
            return any(under_any(p) or (below and any(is_under(b, p) for b in bases))
                       for p, below in _paths(args, path_args, scope(cap)))
        return path_touches
    if key == "path_glob":
        globs = []
        for g in _str_list(v, w):
            g = g.replace("{home}", ctx.get("home", "/var/lib/stockade"))
            if not g.startswith(("/", "*")):
                g = f"{WORKSPACE}/{g}"
            globs.append((g, re.compile(fnmatch.translate(g))))

        def glob_one(p: str, below: bool) -> bool | None:
            if not below:
                return any(rx.match(p) for _, rx in globs)
            got = {_glob_below(g, rx, p) for g, rx in globs}
            return True if True in got else False if got == {False} else None

        def path_glob(agent: str, cap: str, args: dict[str, Any]) -> bool:
            ps = _paths(args, path_args, scope(cap))
            if not ps:
                raise CannotEvaluate("no path argument")
            got = [glob_one(p, below) for p, below in ps]
            if False in got:
                return False
            if None in got:
                raise CannotEvaluate("the call acts on a tree only part of which the glob matches")
            return True
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
    if key in NUMERIC:
        return _numeric(key, v, w)
    if key == "argv_match":
        rx = compile_regex(v.replace("{home_re}", re.escape(ctx.get("home", "/var/lib/stockade")))
                           if isinstance(v, str) else v)
        if not c.permissive:
            return lambda agent, cap, args: rx.search(_argv_text(args)) is not None
        env_allow, cwd_checked, loosening = c.env_allow, c.cwd_checked, not c.negated

        def argv_match(agent: str, cap: str, args: dict[str, Any]) -> bool:
            got = rx.search(_argv_text(args)) is not None
            if got is not loosening:
                return got
            # This answer lets the rule loosen the tier on the strength of the command text: it may
            # only if nothing else the agent set changes what that text runs.
            why = _env_risk(args, env_allow) or (None if cwd_checked else _cwd_risk(args))
            if why:
                raise CannotEvaluate(why)
            return got
        return argv_match
    if key == "url_host_in":
        hosts = HostList(_str_list(v, w))
        reach = c.facts.reach

        def url_host_in(agent: str, cap: str, args: dict[str, Any]) -> bool:
            return hosts.decide(args, reach(agent))
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
    if key == "read_only_hint":
        # The server's own word: it may bring its tools down to a read default, never be turned
        # around (under `not:` its absence would loosen what a server chooses not to annotate).
        if v is not True:
            raise ValueError(f"{w}: expected true")
        if ".not" in w:
            raise ValueError(f"{w}: not allowed under not: (a missing hint is no promise either way)")
        hint = c.facts.read_only
        return lambda agent, cap, args: hint(cap)
    if key == "not":
        inner = compile_when(v, ctx, w, facts=c.facts, permissive=c.permissive, negated=not c.negated)
        if inner is None:
            raise ValueError(f"{w}: expected a non-empty mapping of conditions")
        return lambda agent, cap, args: not inner(agent, cap, args)
    raise ValueError(f"{w}: unknown condition")  # pragma: no cover


# -- numbers ---------------------------------------------------------------------------------------
_DECIMAL = re.compile(r"^-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?$")
MAX_POINTER = 256


def pointer(p: Any, w: str) -> tuple[str, ...]:
    """An RFC 6901 JSON pointer into the arguments (`/amount`, `/order/qty`) -> its tokens."""
    if not isinstance(p, str) or not p.startswith("/") or len(p) > MAX_POINTER or p == "/":
        raise ValueError(f"{w}: {p!r}: expected a JSON pointer like /amount or /order/qty")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in p[1:].split("/"))


def number(v: Any) -> Decimal:
    """A JSON number, or a plain decimal string (exchange APIs send "0.25"), as an exact Decimal.
    Anything else (bool, NaN, 1e999, "1e3", " 5", a list) cannot be compared: the caller fails closed."""
    if isinstance(v, bool):
        raise CannotEvaluate("a boolean is not a number")
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise CannotEvaluate("not a finite number")
        return Decimal(repr(v))
    if isinstance(v, str) and _DECIMAL.match(v):
        return Decimal(v)
    raise CannotEvaluate("not a number or a plain decimal string")


def _at(args: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = args
    for t in path:
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list) and t.isdigit() and (t == "0" or not t.startswith("0")) and int(t) < len(cur):
            cur = cur[int(t)]
        else:
            raise CannotEvaluate(f"argument /{'/'.join(path)} missing")
    return cur


def _bound(v: Any, w: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{w}: expected a finite number")
    return number(v)


def _numeric(key: str, v: Any, w: str) -> Cond:
    """`arg_lt`/`arg_gt: {/pointer: n}` (strict), `arg_between: {/pointer: [lo, hi]}` (inclusive).
    Every pointer must hold a number; one missing or not a number cannot be evaluated (the rule
    then never loosens anything)."""
    if not isinstance(v, dict) or not v:
        raise ValueError(f"{w}: expected a mapping {{/json/pointer: number}}")
    checks: list[tuple[tuple[str, ...], Decimal, Decimal | None]] = []
    for p, bound in v.items():
        path = pointer(p, w)
        if key == "arg_between":
            if not isinstance(bound, list) or len(bound) != 2:
                raise ValueError(f"{w}.{p}: expected [low, high]")
            lo, hi = _bound(bound[0], f"{w}.{p}"), _bound(bound[1], f"{w}.{p}")
            if lo > hi:
                raise ValueError(f"{w}.{p}: low {bound[0]} is above high {bound[1]}")
            checks.append((path, lo, hi))
        else:
            checks.append((path, _bound(bound, f"{w}.{p}"), None))
    items = tuple(checks)

    def compare(agent: str, cap: str, args: dict[str, Any]) -> bool:
        failed: CannotEvaluate | None = None     # a definite False wins, whatever the order
        for path, a, b in items:
            try:
                x = number(_at(args, path))
            except CannotEvaluate as e:
                failed = e
                continue
            if not (x < a if key == "arg_lt" else x > a if key == "arg_gt" else a <= x <= (b if b is not None else a)):
                return False
        if failed is not None:
            raise failed
        return True
    return compare


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
        elif k in NUMERIC and isinstance(v, dict):
            for p in v:
                if isinstance(p, str) and p.startswith("/"):
                    out[f"{k}.{p}"] = (p[1:].split("/", 1)[0].replace("~1", "/").replace("~0", "~"),)
        elif k == "not":
            out.update({f"not.{kk}": vv for kk, vv in args_read(v).items()})
    return out
