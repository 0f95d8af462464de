"""Policy decision latency at 100 / 1,000 / 10,000 rules across the three layers, rate limits on,
against cedarpy on an equivalent policy set (pre-parsed PolicySet and Entities) in the same run.

What is timed for stockade: `PolicyEngine.decide` end to end, i.e. the pure evaluation over the
compiled index, the rate-limit stage (counter snapshot, escalation, SQLite INSERT of the hit for
rules that have a limit; about 5% of rules do) and the Decision object the audit record uses.
What is timed for Cedar: `cedarpy.is_authorized(request, policy_set, entities)` with both sets
parsed once beforehand; the tier is then the max over the satisfied policies' annotations (Cedar
has no rule specificity; this is the closest equivalent and it is cheaper than ours, not dearer).

Rules: 10% system (blocked, conditional), 50% org, 40% for the benchmarked agent. Patterns: 70%
exact names, 20% `category.*`, 10% with a condition (path_under, url_host_in, content size).
Calls: capability names drawn from those the rules name (plus 10% unknown), realistic arguments.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import row
from stockade.core import db as dbmod
from stockade.policy import loader
from stockade.policy.engine import compile_policy
from stockade.policy.model import parse_policy
from stockade.policy.ratelimit import RateLimiter
from stockade.policy.runtime import PolicyEngine

TIERS = ["autonomous", "notify", "approval_required", "blocked"]
AGENT = "bench"


def gen_rules(n: int, rng: random.Random) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    cats = max(5, n // 20)
    names = [f"c{c}.a{a}" for c in range(cats) for a in range(20)]
    layers: dict[str, list[dict[str, Any]]] = {"system": [], "org": [], "agent": []}
    for i in range(n):
        u = rng.random()
        layer = "system" if u < 0.10 else "org" if u < 0.60 else "agent"
        k = rng.random()
        cap = rng.choice(names)
        r: dict[str, Any] = {"id": f"r{i}", "tier": "blocked" if layer == "system" else rng.choice(TIERS[:3])}
        if k < 0.7:
            r["capability"] = cap
        elif k < 0.9:
            r["capability"] = cap.split(".")[0] + ".*"
        else:
            r["capability"] = cap
        c = rng.random()
        if layer == "system" or k >= 0.9:
            r["when"] = rng.choice([
                {"path_under": f"/workspace/p{rng.randrange(50)}"},
                {"url_host_in": [f"h{rng.randrange(50)}.example", f"h{rng.randrange(50)}.example"]},
                {"content_size_gte": rng.choice([1024, 65536, 1 << 20])},
            ])
        if layer != "system" and c < 0.05 and r["tier"] != "approval_required":
            r["rate_limit"] = {"max": 100_000, "window": "1h", "on_exceed": "approval_required"}
        layers[layer].append(r)
    return layers, names


def gen_calls(names: list[str], count: int, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for _ in range(count):
        cap = rng.choice(names) if rng.random() < 0.9 else f"zz{rng.randrange(100)}.nope"
        args = {"path": f"/workspace/p{rng.randrange(60)}/f.txt", "content": "x" * rng.choice([10, 2000]),
                "url": f"https://h{rng.randrange(60)}.example/x"}
        out.append((cap, args))
    return out


def build_engine(layers: dict[str, list[dict[str, Any]]], db: Path) -> PolicyEngine:
    ctx = {"home": "/srv/stockade-bench"}
    system = loader.load_system(ctx)
    extra = parse_policy(json.dumps({"version": 1, "rules": layers["system"]}), "system-extra.yaml", "system", ctx=ctx)
    # one system layer: the shipped rules plus the generated ones
    from stockade.policy.model import PolicyFile

    system = PolicyFile("system", system.file, system.default, system.rules + extra.rules, {}, system.digest)
    org = parse_policy(json.dumps({"version": 1, "default": "notify", "rules": layers["org"]}), "org.yaml", "org",
                       ctx=ctx)
    agent = parse_policy(json.dumps({"version": 1, "rules": layers["agent"]}), "agents/bench.yaml", "agent", ctx=ctx)
    policy = compile_policy(system, org, {AGENT: agent})
    return PolicyEngine(policy, RateLimiter(dbmod.connect(db)))


# -- Cedar equivalent ----------------------------------------------------------------------------
def _cedar_cond(when: dict[str, Any] | None) -> str:
    if not when:
        return ""
    if "path_under" in when:
        p = when["path_under"]
        return f' when {{ context.path == "{p}" || context.path like "{p}/*" }}'
    if "url_host_in" in when:
        return f" when {{ {json.dumps(when['url_host_in'])}.contains(context.host) }}"
    return f" when {{ context.size >= {when['content_size_gte']} }}"


def cedar_text(layers: dict[str, list[dict[str, Any]]]) -> tuple[str, list[int]]:
    out = []
    tiers = []
    for layer, rules in layers.items():
        for r in rules:
            principal = f'principal == Agent::"{AGENT}"' if layer == "agent" else "principal"
            cap = r["capability"]
            if cap.endswith(".*"):
                scope = f"{principal}, action, resource"
                cond = f' when {{ context.cap like "{cap}" }}'
                c2 = _cedar_cond(r.get("when"))
                if c2:
                    cond = cond[:-2] + " && " + c2[len(" when { "):]
            else:
                scope = f'{principal}, action == Action::"{cap}", resource'
                cond = _cedar_cond(r.get("when"))
            out.append(f"permit({scope}){cond};")
            tiers.append(TIERS.index(r["tier"]))
    return "\n".join(out), tiers


def run(quick: bool = False) -> dict[str, Any]:
    import cedarpy

    sizes = [100, 1000, 10_000]
    iters = 3000 if quick else 20_000
    cedar_iters = 300 if quick else 2000
    results = []
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            layers, names = gen_rules(n, rng)
            engine = build_engine(layers, Path(tmp) / f"bench-{n}.db")
            calls = gen_calls(names, iters, rng)
            text, ctiers = cedar_text(layers)
            ps = cedarpy.PolicySet.from_str(text)
            ents = cedarpy.Entities.from_json_str("[]")
            index = {f"policy{i}": t for i, t in enumerate(ctiers)}
            gc.collect()
            gc.freeze()
            for cap, args in calls[:2000]:           # warm up (and fill the memoised bucket lists)
                engine.decide(AGENT, cap, args)
            ours: list[int] = []
            pc = time.perf_counter_ns
            for cap, args in calls:
                t0 = pc()
                engine.decide(AGENT, cap, args)
                ours.append(pc() - t0)
            cedar: list[int] = []
            for i, (cap, args) in enumerate(calls[:cedar_iters + 50]):
                req = {"principal": f'Agent::"{AGENT}"', "action": f'Action::"{cap}"', "resource": 'Resource::"r"',
                       "context": {"cap": cap, "path": args["path"], "size": len(args["content"]),
                                   "host": args["url"].split("/")[2]}}
                t0 = pc()
                res = cedarpy.is_authorized(req, ps, ents)
                max((index.get(p, 0) for p in res.diagnostics.reasons), default=1)
                dt = pc() - t0
                if i >= 50:
                    cedar.append(dt)
            counted = engine.limiter.conn.execute("SELECT COUNT(*) FROM policy_rate_hits").fetchone()[0]
            extra_rows = []
            if n == 1000:
                # the rate-limit path on every call: capabilities whose rule has a limit
                rated_caps = sorted({r["capability"] for rs in layers.values() for r in rs
                                     if "rate_limit" in r and "when" not in r and not r["capability"].endswith("*")})
                rcalls = [(rng.choice(rated_caps), a) for _, a in calls]
                for cap, args in rcalls[:500]:
                    engine.decide(AGENT, cap, args)
                rl: list[int] = []
                for cap, args in rcalls:
                    t0 = pc()
                    engine.decide(AGENT, cap, args)
                    rl.append(pc() - t0)
                extra_rows.append(row("decide, 1000 rules, every call rate-limited (SQLite INSERT each)", rl,
                                      per_s=1e9 / (sum(rl) / len(rl)), rules=n))
            gc.unfreeze()
            engine.limiter.close()
            srt = sorted(ours)
            p999 = srt[min(len(srt) - 1, int(0.999 * len(srt)))] / 1000
            rated = sum(1 for rs in layers.values() for r in rs if "rate_limit" in r)
            results.append(row(f"decide, {n} rules (3 layers, {rated} rate-limited)", ours,
                               anchor="cedarpy PolicySet (pre-parsed)", anchor_ns=cedar,
                               per_s=1e9 / (sum(ours) / len(ours)), p999_us=round(p999, 2), rules=n,
                               counted_calls=round(counted / (len(calls) + 2000), 3)))
            results.extend(extra_rows)
    base = results[0]["p50_us"]
    for r in results:
        if "anchor" in r:
            r["growth_vs_100"] = round(r["p50_us"] / base, 2) if base else None
    return {"bench": "policy", "results": results}


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=1))
