"""Static checks and diffs over compiled policies (for `stockade policy validate|diff`).

Warnings never block loading; they point at rules that cannot do what their author meant:
a rule shadowed in its own bucket, a rule below a layer that always blocks it, a condition on
an argument the capability does not take (it can never be evaluated, so the rule always raises
the tier to approval_required), or a capability no installed part provides yet.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from stockade.policy.conditions import args_read
from stockade.policy.engine import LayerIndex, Policy, always_blocked, evaluate
from stockade.policy.facts import PATH_ARGS
from stockade.policy.loader import Catalog
from stockade.policy.model import TIERS, PolicyFile, Rule


def _covered(rule: Rule, cat: Catalog) -> list[str]:
    return [n for n in cat.names() if rule.covers(n)]


def warnings(pf: PolicyFile, cat: Catalog, higher: Policy | None = None, agent: str = "*") -> list[str]:
    out: list[str] = []
    idx = LayerIndex(pf)
    buckets = [*idx.exact.values(), *idx.prefix.values(), *([idx.star] if idx.star else [])]
    for b in buckets:
        if b.uncond is None:
            continue
        for r in b.rules:
            if r is b.uncond or r.rate_max is not None:
                continue
            if r.tier <= b.uncond.tier:
                out.append(f"{r.file}:{r.line}: rule {r.label} is unreachable: {b.uncond.label} "
                           f"(line {b.uncond.line}) matches the same capabilities unconditionally with a tier "
                           f"at least as restrictive ({TIERS[b.uncond.tier]})")
    for r in pf.rules:
        if "*" not in r.pattern and not cat.exists(r.pattern):
            near = difflib.get_close_matches(r.pattern, cat.names(), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            out.append(f"{r.file}:{r.line}: capability {r.pattern!r} is not provided by any installed part or "
                       f"pack ({hint}a pack installed later may provide it)")
        elif "*" in r.pattern and r.pattern != "*" and not _covered(r, cat):
            out.append(f"{r.file}:{r.line}: pattern {r.pattern!r} matches no known capability")
        if higher is not None and "*" not in r.pattern and pf.layer != "system":
            probe = agent if agent != "*" else "\x00"
            if always_blocked(higher, probe, r.pattern):
                out.append(f"{r.file}:{r.line}: rule {r.label} is unreachable: a higher layer always blocks "
                           f"{r.pattern}")
        if r.when:
            caps = [r.pattern] if "*" not in r.pattern else _covered(r, cat)
            schemas = [(c, cat.args.get(c)) for c in caps]
            known = [a for _, a in schemas if a is not None]
            if not known:
                continue
            for cond, needs in args_read(r.when).items():
                if cond.endswith("path_touches"):
                    continue
                if not any(set(needs) & a for a in known):
                    names = ", ".join(needs) if needs != PATH_ARGS else "a path argument (" + ", ".join(needs) + ")"
                    what = r.pattern if "*" not in r.pattern else f"any capability matching {r.pattern}"
                    out.append(f"{r.file}:{r.line}: rule {r.label}: condition {cond} reads {names}, which "
                               f"{what} does not take; it can never be evaluated, so the rule always raises "
                               f"the tier to at least approval_required")
    return out


# -- diff ------------------------------------------------------------------------------------
def _paths_in(when: Any, acc: set[str]) -> None:
    if not isinstance(when, dict):
        return
    for k, v in when.items():
        if k in ("path_under", "path_outside", "path_touches", "path_glob"):
            for p in [v] if isinstance(v, str) else v if isinstance(v, list) else []:
                if isinstance(p, str):
                    base = p.split("*", 1)[0].rstrip("/") or "/"
                    acc.update({base, f"{base}/x", f"{base}/sub/x"})
        elif k == "not":
            _paths_in(v, acc)


def _samples(rules: Iterable[Rule], capability: str, cat: Catalog) -> list[dict[str, Any]]:
    """Representative arguments: one per condition boundary mentioned by any rule."""
    paths = {"/workspace/x", "/tmp/x", "/shared/x", "/etc/x"}
    sizes = {0}
    hosts = {"example.invalid"}
    argvs = [["true"]]
    equals: list[dict[str, Any]] = []
    for r in rules:
        if not r.covers(capability) or not r.when:
            continue
        _paths_in(r.when, paths)
        for k in ("content_size_lt", "content_size_gte"):
            n = r.when.get(k)
            if isinstance(n, int):
                sizes.update({max(0, n - 1), n})
        for h in r.when.get("url_host_in", []) if isinstance(r.when.get("url_host_in"), list) else []:
            hosts.add(h.replace("*.", "sub."))
        if isinstance(r.when.get("arg_equals"), dict):
            equals.append(r.when["arg_equals"])
    argnames = cat.args.get(capability) or frozenset(PATH_ARGS) | {"content", "url", "argv"}
    base: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    has_path = any(n in argnames for n in PATH_ARGS)
    for p in sorted(paths) if has_path else []:
        a = dict(base)
        for n in ("path", "source", "destination", "cwd"):
            if n in argnames:
                a[n] = p
        if "content" in argnames:
            a["content"] = ""
        out.append(a)
    if "content" in argnames:
        for n in sorted(sizes):
            if n <= 1 << 24:
                out.append({"path": "/workspace/x", "content": "x" * n})
    if "url" in argnames:
        out.extend({"method": "GET", "url": f"https://{h}/"} for h in sorted(hosts))
    if "argv" in argnames:
        out.extend({"argv": a, "cwd": "/workspace"} for a in argvs)
    out.extend(dict(e) for e in equals)
    out.append({})          # last: examples prefer concrete arguments
    return out


def _all_rules(p: Policy) -> list[Rule]:
    out = list(p.system.file.rules)
    if p.org:
        out.extend(p.org.file.rules)
    for a in p.agents.values():
        out.extend(a.file.rules)
    return out


def diff(old: Policy, new: Policy, cat: Catalog) -> list[dict[str, Any]]:
    """Every (agent, capability) pair whose tier changes for some representative arguments."""
    rules = _all_rules(old) + _all_rules(new)
    caps = set(cat.names()) | {r.pattern for r in rules if "*" not in r.pattern}
    agents = sorted(set(old.agents) | set(new.agents)) + ["*"]
    changes = []
    for agent in agents:
        who = agent if agent != "*" else "\x00any"
        for cap in sorted(caps):
            samples = _samples(rules, cap, cat)
            seen: dict[tuple[str, str], dict[str, Any]] = {}
            for args in samples:
                a = evaluate(old, who, cap, args)
                b = evaluate(new, who, cap, args)
                if a.tier != b.tier:
                    k = (TIERS[a.tier], TIERS[b.tier])
                    seen.setdefault(k, args)
            for (ta, tb), args in sorted(seen.items()):
                changes.append({"agent": agent, "capability": cap, "old": ta, "new": tb,
                                "example_args": _short(args)})
    return changes


def _short(args: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, str) or len(v) <= 40 else f"<{len(v)} bytes>") for k, v in args.items()}
