"""Sandbox overhead (issue 6): per-call cost of the full five-layer sandbox.

Cases, interleaved round-robin so load drift hits all alike (docs/design.md "Benchmarks", research §6):
* `filesystem.stat` through the sandbox executor vs the same handler called in-process;
* `process.run ["/bin/true"]` through the sandbox executor vs hardened Debian `bwrap` spawning
  /bin/true (the sandbox's clone flags) vs a plain `/bin/true` spawn.
Needs root (namespaces, cgroups); rows that cannot run are reported with an `error` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import row

BWRAP_HARDENED = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                  "--disable-userns", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr",
                  "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                  "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                  "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "/usr/bin/true"]


def _spawn_ns(argv: list[str]) -> int:
    t = time.perf_counter_ns()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter_ns() - t


def _zygote_size(status: dict[str, Any]) -> dict[str, Any]:
    """What every per-call clone copies: the zygote's resident and anonymous memory (kB)."""
    out: dict[str, Any] = {"case": "zygote resident size (what each clone starts from)",
                           "implementations": len(status.get("implementations") or [])}
    with contextlib.suppress(OSError), open(f"/proc/{status['pid']}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmPTE"):
                out[f"{key.lower()}_kb"] = int(val.split()[0])
    return out


def run(quick: bool) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"bench": "sandbox", "results": [{"case": "sandbox", "error": "needs root"}]}
    n = 40 if quick else 300
    return asyncio.run(_run(n))


async def _run(n: int) -> dict[str, Any]:
    from stockade.capabilities.registry import load_registry
    from stockade.core import agents
    from stockade.core.home import Home
    from stockade.gateway.pipeline import Caller
    from stockade.gateway.service import init_home
    from stockade.sandbox import Profile, SandboxContext, agentns, cgroups
    from stockade.sandbox.executor import SandboxExecutor

    base = Path(tempfile.mkdtemp(prefix="stockade-bench-sandbox-"))
    home = Home.at(base / "home")
    init_home(home)
    db = home.db()
    name = f"bench{os.getpid()}"
    agents.create(db, name)
    parent = f"stockade-bench-{os.getpid()}"
    ex = SandboxExecutor(home, call_timeout=30, cgroup_parent=parent)
    ex.db = db
    results: list[dict[str, Any]] = []
    try:
        zst = ex.start_zygote()
        results.append(_zygote_size(zst))
        reg = load_registry()
        caller = Caller(name, b"", "bench", "bench")
        ws = home.workspace(name)
        have_stat = "filesystem.stat" in reg
        have_run = "process.run" in reg
        await ex.run(caller, reg.get("filesystem.stat"), {"path": "."}, "warm") if have_stat else None
        (ws / "file.txt").write_text("hello\n")

        stat_fn = reg.impl("filesystem.stat") if have_stat else None
        ctx = SandboxContext(agent=name, call_id="x", capability="filesystem.stat", profile=Profile(),
                             workspace=str(ws), trash=str(home.trash / name), tmp=str(base / "tmp"),
                             shared=str(home.shared))
        samples: dict[str, list[int]] = {k: [] for k in ("stat_sbx", "stat_raw", "run_sbx", "bwrap", "true")}
        bwrap = shutil.which("bwrap")
        for i in range(n + 5):
            warm = i < 5
            if have_stat:
                t = time.perf_counter_ns()
                await ex.run(caller, reg.get("filesystem.stat"), {"path": "file.txt"}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    samples["stat_sbx"].append(d)
                t = time.perf_counter_ns()
                stat_fn(ctx, {"path": "file.txt"})  # type: ignore[misc]
                if not warm:
                    samples["stat_raw"].append(time.perf_counter_ns() - t)
            if have_run:
                t = time.perf_counter_ns()
                out = await ex.run(caller, reg.get("process.run"), {"argv": ["/bin/true"]}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    assert out["exit_code"] == 0, out
                    samples["run_sbx"].append(d)
            if bwrap:
                d = _spawn_ns(BWRAP_HARDENED)
                if not warm:
                    samples["bwrap"].append(d)
            d = _spawn_ns(["/bin/true"])
            if not warm:
                samples["true"].append(d)
        if have_stat:
            r = row("filesystem.stat sandboxed (all five layers)", samples["stat_sbx"],
                    anchor="filesystem.stat in-process, unsandboxed", anchor_ns=samples["stat_raw"])
            r["overhead_p50_us"] = round(r["p50_us"] - r["anchor_p50_us"], 2)
            r["overhead_p99_us"] = round(r["p99_us"] - r["anchor_p99_us"], 2)
            results.append(r)
        else:
            results.append({"case": "filesystem.stat sandboxed", "error": "filesystem.stat not in the registry"})
        if have_run:
            results.append(row("process.run /bin/true sandboxed (all five layers)", samples["run_sbx"],
                               anchor="bwrap hardened /bin/true" if bwrap else None,
                               anchor_ns=samples["bwrap"] or None))
        else:
            results.append({"case": "process.run /bin/true sandboxed", "error": "process.run not in the registry"})
        if bwrap:
            results.append(row("bwrap hardened /bin/true (anchor alone)", samples["bwrap"],
                               anchor="/bin/true unsandboxed", anchor_ns=samples["true"]))
        results.append(row("/bin/true unsandboxed (subprocess)", samples["true"]))
    finally:
        ex.stop()
        db.close()
        agentns.remove(name, home)
        info = cgroups.detect()
        cgroups.AgentCgroup(info, parent, name).remove()
        for m in info.v1.values():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(m, parent))
        shutil.rmtree(base, ignore_errors=True)
    return {"bench": "sandbox", "results": results}
