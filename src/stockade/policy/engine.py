"""The compiled policy and the pure evaluator (docs/design.md "Policy").

`compile_policy` turns parsed layers into an index (per layer: dict by exact name, dict by
prefix, the `*` bucket), so a decision looks at a handful of buckets whatever the rule count.
`evaluate` is pure: (policy, agent, capability, args) -> Verdict, no clock, no I/O. Rate limits
are a separate pure step (`escalate`) over counter snapshots the shell passes in.

Semantics, in one place:
- within a layer, walk buckets from most to least specific (exact, longest prefix, ..., `*`); the
  first bucket with a matching rule decides, most restrictive tier among its matching rules;
- a rule whose condition cannot be evaluated makes the layer's verdict the more restrictive of
  "it matched, tier raised to >= approval_required (blocked in the system layer)" and "it did
  not match" (possibly abstaining);
- the effective tier is the max over layers that did not abstain; if every layer may abstain,
  the default (org's, else the system's; an agent file's default can only raise it) joins the max.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.policy.conditions import CallArgs
from stockade.policy.model import APPROVAL, BLOCKED, LAYERS, TIERS, PolicyFile, Rule


@dataclass(frozen=True)
class Bucket:
    uncond: Rule | None                 # the most restrictive unconditional rule (canonical tie-break)
    uncond_rated: tuple[Rule, ...]      # unconditional rules with rate limits (all count)
    cond: tuple[Rule, ...]              # conditional rules, canonical order
    rules: tuple[Rule, ...]


def _best(rules: list[Rule]) -> Rule:
    return min(rules, key=lambda r: (-r.tier, r.sort_key))


def _bucket(rules: list[Rule]) -> Bucket:
    rules = sorted(rules, key=lambda r: r.sort_key)
    unc = [r for r in rules if r.cond is None]
    return Bucket(_best(unc) if unc else None, tuple(r for r in unc if r.rate_max is not None),
                  tuple(r for r in rules if r.cond is not None), tuple(rules))


class LayerIndex:
    """One layer's rules, indexed by capability pattern."""

    def __init__(self, pf: PolicyFile):
        self.file = pf
        self.layer = pf.layer
        self.default = pf.default
        self.system = pf.layer == "system"
        ex: dict[str, list[Rule]] = {}
        px: dict[str, list[Rule]] = {}
        star: list[Rule] = []
        for r in pf.rules:
            if r.pattern == "*":
                star.append(r)
            elif r.pattern.endswith(".*"):
                px.setdefault(r.pattern[:-2], []).append(r)
            else:
                ex.setdefault(r.pattern, []).append(r)
        self.exact = {k: _bucket(v) for k, v in ex.items()}
        self.prefix = {k: _bucket(v) for k, v in px.items()}
        self.star = _bucket(star) if star else None
        self._cache: dict[str, tuple[Bucket, ...]] = {}

    def buckets(self, capability: str) -> tuple[Bucket, ...]:
        """Candidate buckets, most specific first (memoised: the policy is immutable)."""
        got = self._cache.get(capability)
        if got is not None:
            return got
        out: list[Bucket] = []
        b = self.exact.get(capability)
        if b:
            out.append(b)
        if self.prefix:
            parts = capability.split(".")
            for i in range(len(parts) - 1, 0, -1):
                b = self.prefix.get(".".join(parts[:i]))
                if b:
                    out.append(b)
        if self.star:
            out.append(self.star)
        res = tuple(out)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[capability] = res
        return res

    def raised(self, r: Rule) -> int:
        """The tier an unevaluable rule counts as (never looser than approval_required)."""
        return BLOCKED if self.system else max(r.tier, APPROVAL)


@dataclass(frozen=True)
class LayerVerdict:
    tier: int | None                    # None = abstained
    rule: Rule | None
    may_abstain: bool                   # some reading of an unevaluable rule abstains
    rated: tuple[Rule, ...] = ()        # matching rules with rate limits (counted per call)
    unevaluable: tuple[Rule, ...] = ()

    def describe(self) -> dict[str, Any]:
        if self.tier is None:
            return {"tier": None, "abstained": True}
        out: dict[str, Any] = {"tier": TIERS[self.tier]}
        if self.rule is not None:
            out.update(rule=self.rule.label, file=self.rule.file, line=self.rule.line)
        if self.may_abstain:
            out["may_abstain"] = True
        if self.unevaluable:
            out["unevaluable"] = [r.label for r in self.unevaluable]
        return out


ABSTAIN = LayerVerdict(None, None, True)


def layer_verdict(idx: LayerIndex, agent: str, capability: str, args: dict[str, Any]) -> LayerVerdict:
    return _walk(idx, idx.buckets(capability), 0, agent, capability, args)


def _walk(idx: LayerIndex, buckets: tuple[Bucket, ...], i: int, agent: str, capability: str,
          args: dict[str, Any]) -> LayerVerdict:
    while i < len(buckets):
        b = buckets[i]
        i += 1
        matched: list[Rule] = []
        errs: list[Rule] = []
        floor = b.uncond.tier if b.uncond is not None else -1
        for r in b.cond:
            # A conditional rule that cannot change this bucket's outcome need not be evaluated.
            if r.rate_max is None and idx.raised(r) <= floor:
                continue
            try:
                ok = r.cond(agent, capability, args)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - any evaluation error fails closed
                errs.append(r)
                continue
            if ok:
                matched.append(r)
        if b.uncond is not None:
            matched.append(b.uncond)
        if matched:
            best = _best(matched)
            if errs:
                e = min(errs, key=lambda r: (-idx.raised(r), r.sort_key))
                if idx.raised(e) > best.tier:
                    return LayerVerdict(idx.raised(e), e, False, _rated(matched, b), tuple(errs))
            return LayerVerdict(best.tier, best, False, _rated(matched, b), tuple(errs))
        if errs:
            e = min(errs, key=lambda r: (-idx.raised(r), r.sort_key))
            rest = _walk(idx, buckets, i, agent, capability, args)
            if rest.tier is not None and rest.tier > idx.raised(e):
                return LayerVerdict(rest.tier, rest.rule, rest.may_abstain, rest.rated,
                                    tuple(errs) + rest.unevaluable)
            return LayerVerdict(idx.raised(e), e, rest.may_abstain, rest.rated, tuple(errs) + rest.unevaluable)
    return ABSTAIN


def _rated(matched: list[Rule], b: Bucket) -> tuple[Rule, ...]:
    return tuple(r for r in matched if r.rate_max is not None) + tuple(r for r in b.uncond_rated
                                                                       if r is not b.uncond)


@dataclass(frozen=True)
class Policy:
    """An immutable compiled policy: the system layer, the org layer, per-agent layers."""

    system: LayerIndex
    org: LayerIndex | None
    agents: Mapping[str, LayerIndex]
    version: str
    files: tuple[str, ...] = ()
    _visible: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)
    _tables: dict[tuple[str, str], DecisionTable] = field(default_factory=dict, compare=False, repr=False)

    def layers(self, agent: str) -> tuple[LayerIndex | None, ...]:
        return (self.system, self.org, self.agents.get(agent))

    def default(self, agent: str) -> int:
        base = self.org.default if self.org is not None and self.org.default is not None else self.system.default
        base = APPROVAL if base is None else base
        a = self.agents.get(agent)
        if a is not None and a.default is not None:
            base = max(base, a.default)
        return base

    @property
    def rule_count(self) -> int:
        n = len(self.system.file.rules) + (len(self.org.file.rules) if self.org else 0)
        return n + sum(len(a.file.rules) for a in self.agents.values())

    def sandbox_profile(self, agent: str) -> dict[str, Any]:
        """Org sandbox defaults overlaid with the agent file's (the sandbox part applies them)."""
        out = dict(self.org.file.sandbox) if self.org else {}
        a = self.agents.get(agent)
        if a is not None:
            out.update(a.file.sandbox)
        return out


def compile_policy(system: PolicyFile, org: PolicyFile | None, agents: Mapping[str, PolicyFile]) -> Policy:
    import hashlib

    h = hashlib.sha256(system.digest.encode())
    h.update((org.digest if org else "-").encode())
    for name in sorted(agents):
        h.update(f"{name}={agents[name].digest}".encode())
    files = (system.file, *([org.file] if org else []), *(agents[n].file for n in sorted(agents)))
    return Policy(LayerIndex(system), LayerIndex(org) if org else None,
                  {n: LayerIndex(pf) for n, pf in agents.items()}, h.hexdigest()[:16], files)


@dataclass(frozen=True)
class Verdict:
    """The pure decision: effective tier, the deciding rule and every layer's verdict."""

    tier: int
    rule: Rule | None
    layer: str                       # system | org | agent | default
    layers: tuple[tuple[str, LayerVerdict], ...]
    default: int


def combine(layers: tuple[tuple[str, LayerVerdict], ...], default: int) -> tuple[int, Rule | None, str]:
    tier = -1
    rule: Rule | None = None
    where = "default"
    all_may_abstain = True
    for name, v in layers:          # system first: on a tie the highest layer is reported
        if v.tier is not None and v.tier > tier:
            tier, rule, where = v.tier, v.rule, name
        if not v.may_abstain:
            all_may_abstain = False
    if all_may_abstain and default > tier:
        tier, rule, where = default, None, "default"
    return tier, rule, where


def evaluate(policy: Policy, agent: str, capability: str, args: dict[str, Any]) -> Verdict:
    """Pure and deterministic: same inputs, same verdict; never raises on bad arguments."""
    args = CallArgs.of(args)
    out = []
    for name, idx in zip(LAYERS, policy.layers(agent), strict=True):
        if idx is not None:
            out.append((name, layer_verdict(idx, agent, capability, args)))
    lv = tuple(out)
    d = policy.default(agent)
    tier, rule, where = combine(lv, d)
    return Verdict(tier, rule, where, lv, d)


@dataclass(frozen=True)
class RateState:
    rule: Rule
    count: int | None    # hits inside the window (None when not asked for: it costs O(max))
    exceeded: bool
    retry_after: float | None


def window_state(rule: Rule, hits: Any, now: float, count: bool = False) -> RateState:
    """`hits`: ascending timestamps, at most rule.rate_max of the newest (a deque).

    The limit is reached when the max-th newest hit is still inside the window: O(1)."""
    m = rule.rate_max or 0
    w = rule.rate_window or 0.0
    start = now - w
    exceeded = len(hits) >= m and hits[-m] > start
    n: int | None = None
    if count:
        n = 0
        for t in reversed(hits):
            if t <= start:
                break
            n += 1
    return RateState(rule, n, exceeded, (hits[-m] + w - now) if exceeded else None)


def escalate(v: Verdict, states: Mapping[str, RateState]) -> tuple[Verdict, float | None, list[RateState]]:
    """Pure: raise each layer's verdict by its exceeded rate limits; returns the new verdict, the
    retry_after to report and the exceeded states. Never lowers anything."""
    exceeded: list[RateState] = []
    new_layers = []
    changed = False
    for name, lv in v.layers:
        tier = lv.tier
        rule = lv.rule
        for r in lv.rated:
            s = states.get(r.key)
            if s is not None and s.exceeded:
                exceeded.append(s)
                up = r.rate_on_exceed if r.rate_on_exceed is not None else BLOCKED
                if tier is None or up > tier:
                    tier, rule, changed = up, r, True
        new_layers.append((name, LayerVerdict(tier, rule, lv.may_abstain, lv.rated, lv.unevaluable)
                           if tier != lv.tier else lv))
    if not changed:
        return v, (max(s.retry_after or 0.0 for s in exceeded) if exceeded else None), exceeded
    layers = tuple(new_layers)
    tier, rule, where = combine(layers, v.default)
    retry = max((s.retry_after or 0.0) for s in exceeded) if exceeded else None
    return Verdict(tier, rule, where, layers, v.default), retry, exceeded


class _ArgDependent(Exception):  # noqa: N818
    pass


class _Probe(dict):  # type: ignore[type-arg]
    """Arguments that cannot be looked at: tells name-only conditions from argument-dependent ones."""

    def _no(self, *a: Any, **k: Any) -> Any:
        raise _ArgDependent

    __contains__ = __getitem__ = get = keys = items = values = __iter__ = __len__ = _no


def _static(r: Rule, agent: str, capability: str) -> bool | None:
    """True/False when the rule's condition does not depend on the arguments, else None."""
    if r.cond is None:
        return True
    try:
        return bool(r.cond(agent, capability, _Probe()))
    except Exception:  # noqa: BLE001
        return None


def min_tier(idx: LayerIndex, capability: str, agent: str = "") -> tuple[int | None, bool]:
    """Lower bound of the layer's verdict over all arguments: (tier or None, may abstain)."""
    lo: int | None = None
    for b in idx.buckets(capability):
        always = [r.tier for r in b.rules if _static(r, agent, capability) is True]
        maybe = [r.tier for r in b.rules if _static(r, agent, capability) is None]
        if always:   # rules of the same bucket can only raise its verdict
            t = max(always)
            lo = t if lo is None else min(lo, t)
            return lo, False
        if maybe:
            t = min(maybe)
            lo = t if lo is None else min(lo, t)
    return lo, True


def always_blocked(policy: Policy, agent: str, capability: str) -> bool:
    """True only when every possible call of `capability` by `agent` is blocked (ignoring rate
    limits, which are temporary). Conservative: unsure means visible."""
    key = (agent, capability)
    got = policy._visible.get(key)
    if got is not None:
        return not got
    mins = []
    all_abstain = True
    definite = -1
    for idx in policy.layers(agent):
        if idx is None:
            continue
        lo, may_abstain = min_tier(idx, capability, agent)
        if not may_abstain:
            all_abstain = False
            definite = max(definite, lo if lo is not None else -1)
        if lo is not None:
            mins.append(lo)
    bound = min([policy.default(agent), *mins]) if all_abstain else definite
    blocked = bound >= BLOCKED
    if len(policy._visible) > 100_000:
        policy._visible.clear()
    policy._visible[key] = not blocked
    return blocked


# -- what a capability can be, before its arguments are known ------------------------------------
class _SchemaProbe(dict):  # type: ignore[type-arg]
    """Arguments of a capability whose argument names are known, values not: reading a name the
    capability takes is argument-dependent; a name it does not take is simply absent."""

    def __init__(self, names: frozenset[str]):
        super().__init__()
        self.names = names

    def _no(self, *a: Any, **k: Any) -> Any:
        raise _ArgDependent

    def __contains__(self, k: object) -> bool:
        if k in self.names:
            raise _ArgDependent
        return False

    def __getitem__(self, k: Any) -> Any:
        if k in self.names:
            raise _ArgDependent
        raise KeyError(k)

    def get(self, k: Any, default: Any = None) -> Any:
        if k in self.names:
            raise _ArgDependent
        return default

    keys = items = values = __iter__ = __len__ = _no


def _static_for(r: Rule, agent: str, capability: str, argnames: frozenset[str] | None) -> bool | None:
    """Like `_static`, but a capability's known argument names let conditions on arguments it
    does not take be decided (the data-home rule cannot fire on `system.time`)."""
    if r.cond is None:
        return True
    probe: dict[str, Any] = _Probe() if argnames is None else _SchemaProbe(argnames)
    try:
        return bool(r.cond(agent, capability, probe))
    except _ArgDependent:
        return None
    except Exception:  # noqa: BLE001 - cannot evaluate without arguments: it depends on them
        return None


@dataclass(frozen=True)
class Outlook:
    """The tiers a capability can take for an agent over every possible argument: `lo` is the
    least restrictive, `hi` the most; `deciding` are the argument-dependent rules in between."""

    lo: int
    hi: int
    deciding: tuple[Rule, ...]

    @property
    def depends(self) -> bool:
        return self.lo != self.hi


def _layer_outlook(idx: LayerIndex, agent: str, capability: str,
                   argnames: frozenset[str] | None) -> tuple[int | None, int | None, bool, list[Rule]]:
    """(lowest, highest, may abstain, argument-dependent rules) of one layer's verdict."""
    lo: int | None = None
    hi: int | None = None
    deciding: list[Rule] = []
    for b in idx.buckets(capability):
        always = [r for r in b.rules if _static_for(r, agent, capability, argnames) is True]
        maybe = [r for r in b.rules if _static_for(r, agent, capability, argnames) is None]
        floor = max((r.tier for r in always), default=-1)
        live = [r for r in maybe if r.tier > floor]   # a rule at or below the floor changes nothing
        deciding.extend(live)
        tops = [floor, *(r.tier for r in live)]
        hi = max(hi if hi is not None else -1, *tops)
        if always:
            lo = floor if lo is None else min(lo, floor)
            return lo, hi, False, deciding
        if maybe:
            t = min(r.tier for r in maybe)
            lo = t if lo is None else min(lo, t)
    return lo, hi, True, deciding


def outlook(policy: Policy, agent: str, capability: str, argnames: frozenset[str] | None = None) -> Outlook:
    """Pure: the range of tiers `capability` can take for `agent` whatever its arguments, and the
    rules that decide where in that range a call falls (rate limits aside: they are temporary).
    `argnames`: the arguments the capability takes (None: unknown, any rule on arguments counts)."""
    los: list[int] = []
    his: list[int] = []
    definite = -1
    all_abstain = True
    deciding: list[Rule] = []
    for idx in policy.layers(agent):
        if idx is None:
            continue
        lo, hi, may_abstain, rules = _layer_outlook(idx, agent, capability, argnames)
        deciding.extend(rules)
        if not may_abstain:
            all_abstain = False
            definite = max(definite, lo if lo is not None else -1)
        if lo is not None:
            los.append(lo)
        if hi is not None:
            his.append(hi)
    d = policy.default(agent)
    low = min([d, *los]) if all_abstain else definite
    high = max([low, *his, *([d] if all_abstain else [])])
    return Outlook(low, high, tuple(deciding) if low != high else ())


# -- one (agent, capability) decided many times: audit replay -------------------------------------
class _Recorder(dict):  # type: ignore[type-arg]
    """Arguments that refuse to be read and remember being asked: a condition that swallows the
    refusal (a broad `except`) is still caught reading them."""

    touched = False

    def _no(self, *a: Any, **k: Any) -> Any:
        self.touched = True
        raise _ArgDependent

    __contains__ = __getitem__ = get = keys = items = values = __iter__ = __len__ = __reversed__ = _no
    copy = setdefault = pop = popitem = __eq__ = __ne__ = __or__ = __ror__ = _no


def _reads_args(r: Rule, agent: str, capability: str) -> bool:
    """True unless the rule's condition provably decides without looking at the arguments."""
    if r.cond is None:
        return False
    probe = _Recorder()
    try:
        r.cond(agent, capability, probe)
    except Exception:  # noqa: BLE001 - cannot be decided without the arguments: they matter
        return True
    return probe.touched


def _outcome(r: Rule, agent: str, capability: str, args: dict[str, Any]) -> bool | None:
    """What `_walk` sees of a condition: matched, did not match, or None (cannot be evaluated)."""
    try:
        return bool(r.cond(agent, capability, args))  # type: ignore[misc]
    except Exception:  # noqa: BLE001 - any evaluation error fails closed, as in _walk
        return None


_TABLE_MEMO = 4096


class DecisionTable:
    """`evaluate` for one (agent, capability), precompiled for deciding many calls.

    Why it is exact: for a fixed agent and capability, `evaluate`'s walk depends on the
    arguments only through the outcomes (matched / not / cannot evaluate) of the conditional
    rules it may run. So the verdict is memoised per outcome vector of those conditions, and
    the first call with a new vector is decided by `evaluate` itself. When none of them reads
    the arguments (`fixed`), the verdict is the same for every call.
    """

    def __init__(self, policy: Policy, agent: str, capability: str):
        self.policy, self.agent, self.capability = policy, agent, capability
        conds: list[Rule] = []
        for idx in policy.layers(agent):
            if idx is None:
                continue
            for b in idx.buckets(capability):
                floor = b.uncond.tier if b.uncond is not None else -1
                # exactly the rules `_walk` does not skip
                conds.extend(r for r in b.cond if r.rate_max is not None or idx.raised(r) > floor)
        self.conds = tuple(conds)
        self.depends = any(_reads_args(r, agent, capability) for r in conds)
        self.fixed = None if self.depends else evaluate(policy, agent, capability, {})
        self._memo: dict[tuple[bool | None, ...], Verdict] = {}

    def verdict(self, args: dict[str, Any]) -> Verdict:
        """The same Verdict as `evaluate(policy, agent, capability, args)`."""
        if self.fixed is not None:
            return self.fixed
        agent, cap = self.agent, self.capability
        args = CallArgs.of(args)
        key = tuple([_outcome(r, agent, cap, args) for r in self.conds])
        v = self._memo.get(key)
        if v is None:
            v = evaluate(self.policy, agent, cap, args)
            if len(self._memo) >= _TABLE_MEMO:
                self._memo.clear()
            self._memo[key] = v
        return v


def decision_table(policy: Policy, agent: str, capability: str) -> DecisionTable:
    """The (memoised) DecisionTable of `agent` calling `capability` under `policy`."""
    key = (agent, capability)
    t = policy._tables.get(key)
    if t is None:
        if len(policy._tables) > 100_000:
            policy._tables.clear()
        t = policy._tables[key] = DecisionTable(policy, agent, capability)
    return t


def depends_on_args(policy: Policy, agent: str, capability: str) -> bool:
    """Whether the arguments of a call can change its verdict (rate limits aside): False means
    every call of `capability` by `agent` gets the same `evaluate` verdict."""
    return decision_table(policy, agent, capability).depends
