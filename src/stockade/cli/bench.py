"""`stockade bench [NAME] --json`: run the benchmarks in bench/ (docs/design.md "Benchmarks").

Each `bench/<name>.py` exposes `run(quick: bool) -> dict` returning
`{"bench": name, "results": [{"case", "p50_us", "p99_us", "per_s"?, "anchor"?, "anchor_p50_us"?, "ratio"?}]}`;
this command adds the machine description and prints a table (or the JSON object).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import click

from stockade.cli.progress import working

BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"


def machine() -> dict[str, Any]:
    return {"kernel": os.uname().release, "arch": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> Any:
    path = BENCH_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"stockade_bench_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return mod


@click.command()
@click.argument("name", required=False)
@click.option("--quick", is_flag=True, help="Fewer iterations (smoke run).")
@click.option("--json", "as_json", is_flag=True)
def bench(name: str | None, quick: bool, as_json: bool) -> None:
    """Run a benchmark (or all): gateway, policy, audit, sandbox, egress, perimeter, packs."""
    names = [name] if name else available()
    for n in names:
        if n not in available():
            click.echo(f"stockade: no benchmark {n!r} (have: {', '.join(available())})", err=True)
            sys.exit(2)
    for n in names:
        with working(f"bench {n}", as_json) as step:
            mod = load(n)
            util = sys.modules.get("_util")      # bench/_util.py tells each finished case (on_row)
            if util is not None and hasattr(util, "on_row"):
                setattr(util, "on_row", lambda case: step(f"finished {case}"))  # noqa: B010
            try:
                out = mod.run(quick=quick)
            finally:
                if util is not None and hasattr(util, "on_row"):
                    setattr(util, "on_row", None)  # noqa: B010
        out = {"bench": n, "machine": machine(), **{k: v for k, v in out.items() if k != "bench"}}
        if as_json:
            click.echo(json.dumps(out))
            continue
        click.echo(f"== {n}")
        for r in out["results"]:
            extra = ""
            if r.get("anchor"):
                extra = f"  anchor {r['anchor']}: p50 {r.get('anchor_p50_us', 0):.1f} us  ratio {r.get('ratio', 0):.2f}"
            per_s = f"  {r['per_s']:.0f}/s" if r.get("per_s") else ""
            click.echo(f"  {r['case']:<44} p50 {r.get('p50_us', 0):9.1f} us  "
                       f"p99 {r.get('p99_us', 0):9.1f} us{per_s}{extra}")


def register(cli: click.Group) -> None:
    cli.add_command(bench)
