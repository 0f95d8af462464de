"""Sandbox overhead (issues 6 and 16): per-call cost of the full five-layer sandbox.

Cases, interleaved round-robin so load drift hits all alike (docs/design.md "Benchmarks", research §6):
* `filesystem.stat` through the sandbox executor, served by a pre-armed child (pool warm: the
  bench waits, untimed, until one is ready) and cold (a zygote without the pool: the path every
  call took before issue 16), vs the same handler called in-process;
* `process.run ["/bin/true"]` the same two ways vs hardened Debian `bwrap` spawning /bin/true
  (the sandbox's clone flags) vs a plain `/bin/true` spawn;
* throughput at saturation: 16 concurrent JSON-RPC clients calling `process.run /bin/true`
  through a real gateway (`stockade serve`: auth, policy, durable audit, sandbox) vs 16
  concurrent hardened bwrap `/bin/true` spawns, alternating windows of the same length.
Needs root (namespaces, cgroups); rows that cannot run are reported with an `error` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _util import row
from stockade.core.volume import unmount_under

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


def _proc_cpu_ns(pid: int) -> int:
    """CPU a process used, its reaped children included (utime+stime+cutime+cstime), in ns."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _children_cpu_ns() -> int:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


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
    out = asyncio.run(_run(n))
    out["results"] += _saturation(3.0 if quick else 10.0)
    return out


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
    ex = SandboxExecutor(home, call_timeout=30, cgroup_parent=parent)     # cold: no pool
    ex.db = db
    pooled = SandboxExecutor(home, call_timeout=30, cgroup_parent=parent, pool=True)
    pooled.db = db
    results: list[dict[str, Any]] = []
    try:
        zst = ex.start_zygote()
        pooled.start_zygote()
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
        samples: dict[str, list[int]] = {k: [] for k in ("stat_sbx", "stat_pool", "stat_raw", "run_sbx", "run_pool",
                                                         "bwrap", "true")}
        bwrap = shutil.which("bwrap")
        hits = 0
        gw: dict[str, list[int]] = {"pool": [], "cold": []}      # the gateway thread's CPU per call
        zyg: dict[str, list[int]] = {"pool": [], "cold": []}     # a zygote's CPU, children included
        spawn_cpu = {"bwrap": 0, "true": 0}
        for i in range(n + 5):
            warm = i < 5
            if i == 5:
                zyg["cold"].append(_proc_cpu_ns(zst["pid"]))
                zyg["pool"].append(_proc_cpu_ns(pooled.status["pid"]))
            if have_stat:
                c, t = time.thread_time_ns(), time.perf_counter_ns()
                await ex.run(caller, reg.get("filesystem.stat"), {"path": "file.txt"}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    samples["stat_sbx"].append(d)
                    gw["cold"].append(time.thread_time_ns() - c)
                await _pool_warm(pooled)
                c, t = time.thread_time_ns(), time.perf_counter_ns()
                await pooled.run(caller, reg.get("filesystem.stat"), {"path": "file.txt"}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    gw["pool"].append(time.thread_time_ns() - c)
                    samples["stat_pool"].append(d)
                    hits += pooled.last_child.get("pooled", False)
                t = time.perf_counter_ns()
                stat_fn(ctx, {"path": "file.txt"})  # type: ignore[misc]
                if not warm:
                    samples["stat_raw"].append(time.perf_counter_ns() - t)
            if have_run:
                c, t = time.thread_time_ns(), time.perf_counter_ns()
                out = await ex.run(caller, reg.get("process.run"), {"argv": ["/bin/true"]}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    assert out["exit_code"] == 0, out
                    samples["run_sbx"].append(d)
                    gw["cold"].append(time.thread_time_ns() - c)
                await _pool_warm(pooled)
                c, t = time.thread_time_ns(), time.perf_counter_ns()
                out = await pooled.run(caller, reg.get("process.run"), {"argv": ["/bin/true"]}, "b")
                d = time.perf_counter_ns() - t
                if not warm:
                    gw["pool"].append(time.thread_time_ns() - c)
                    assert out["exit_code"] == 0, out
                    samples["run_pool"].append(d)
                    hits += pooled.last_child.get("pooled", False)
            if bwrap:
                c = _children_cpu_ns()
                d = _spawn_ns(BWRAP_HARDENED)
                if not warm:
                    samples["bwrap"].append(d)
                    spawn_cpu["bwrap"] += _children_cpu_ns() - c
            c = _children_cpu_ns()
            d = _spawn_ns(["/bin/true"])
            if not warm:
                samples["true"].append(d)
                spawn_cpu["true"] += _children_cpu_ns() - c
        await asyncio.sleep(0.5)      # the last calls' children exit and are reaped
        zyg["cold"].append(_proc_cpu_ns(zst["pid"]))
        zyg["pool"].append(_proc_cpu_ns(pooled.status["pid"]))
        results.append(_cpu_row(gw, zyg, spawn_cpu, n))
        if have_stat:
            for key, case in (("stat_pool", "filesystem.stat sandboxed, pre-armed child (pool warm)"),
                              ("stat_sbx", "filesystem.stat sandboxed, cold (no pool)")):
                r = row(case, samples[key], anchor="filesystem.stat in-process, unsandboxed",
                        anchor_ns=samples["stat_raw"])
                r["overhead_p50_us"] = round(r["p50_us"] - r["anchor_p50_us"], 2)
                r["overhead_p99_us"] = round(r["p99_us"] - r["anchor_p99_us"], 2)
                results.append(r)
        else:
            results.append({"case": "filesystem.stat sandboxed", "error": "filesystem.stat not in the registry"})
        if have_run:
            results.append(row("process.run /bin/true sandboxed, pre-armed child (pool warm)", samples["run_pool"],
                               anchor="bwrap hardened /bin/true" if bwrap else None,
                               anchor_ns=samples["bwrap"] or None))
            results.append(row("process.run /bin/true sandboxed, cold (no pool)", samples["run_sbx"],
                               anchor="bwrap hardened /bin/true" if bwrap else None,
                               anchor_ns=samples["bwrap"] or None))
            results.append({"case": "pooled calls served by a pre-armed child", "hits": hits,
                            "calls": len(samples["run_pool"]) + len(samples["stat_pool"]),
                            "pool": (await pooled.pool_stats()).get("pool")})
        else:
            results.append({"case": "process.run /bin/true sandboxed", "error": "process.run not in the registry"})
        if bwrap:
            results.append(row("bwrap hardened /bin/true (anchor alone)", samples["bwrap"],
                               anchor="/bin/true unsandboxed", anchor_ns=samples["true"]))
        results.append(row("/bin/true unsandboxed (subprocess)", samples["true"]))
    finally:
        ex.stop()
        pooled.stop()
        db.close()
        agentns.remove(name, home)
        cgroups.remove_tree(cgroups.detect(), parent)   # the agent's group sits under a home tag
        shutil.rmtree(base, ignore_errors=True)
    return {"bench": "sandbox", "results": results}


def _cpu_row(gw: dict[str, list[int]], zyg: dict[str, list[int]], spawn: dict[str, int], n: int) -> dict[str, Any]:
    """CPU per call (a shared machine's fairer measure than wall time): the gateway thread's
    p50 per sandboxed call, and everything (gateway thread + zygote + its children: arming,
    the call, exit) averaged over each executor's calls, beside a bwrap spawn's children CPU.
    The pooled zygote's figure includes the bench's untimed pool polls."""
    out: dict[str, Any] = {"case": "CPU per call (us)"}
    for k in ("pool", "cold"):
        calls = len(gw[k])
        if calls:
            out[f"gateway_p50_{k}"] = round(sorted(gw[k])[calls // 2] / 1000, 1)
            z = zyg[k][-1] - zyg[k][0] if len(zyg[k]) == 2 else 0
            out[f"all_mean_{k}"] = round((sum(gw[k]) + z) / calls / 1000, 1)
    out["bwrap_mean"] = round(spawn["bwrap"] / n / 1000, 1)
    out["true_mean"] = round(spawn["true"] / n / 1000, 1)
    return out


async def _pool_warm(ex: Any, timeout: float = 5.0) -> None:
    """Untimed: wait until the pool holds a ready child (the 'pool warm' condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await ex.pool_stats()).get("ready_pids"):
            return
        await asyncio.sleep(0.002)


def _window(worker: Any, clients: int, seconds: float) -> int:
    """`clients` threads each running `worker()` in a loop for `seconds`; completed calls."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            worker()
            done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def _saturation(seconds: float, clients: int = 16) -> list[dict[str, Any]]:
    """16 concurrent JSON-RPC clients through a real gateway vs 16 concurrent bwrap spawns."""
    import httpx

    bwrap = shutil.which("bwrap")
    case = f"throughput at saturation: {clients} JSON-RPC clients, process.run /bin/true, full gateway"
    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-sat-"))
    home = tmp / "home"
    py = [sys.executable, "-m", "stockade"]
    subprocess.run([*py, "init", "--home", str(home), "--policy", "open"], check=True, capture_output=True)
    org = home / "policies" / "org.yaml"      # the agent may use both cores, as the bwrap spawns do
    org.write_text(org.read_text().replace("cpu: 1\n", "cpu: 2\n"))
    key = json.loads(subprocess.run([*py, "agent", "create", "satbench", "--json", "--home", str(home)], check=True,
                                    capture_output=True, text=True).stdout)["key"]
    gw = subprocess.Popen([*py, "serve", "--home", str(home), "--port", "0", "--dashboard-port", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "capabilities.invoke",
                       "params": {"name": "process.run", "arguments": {"argv": ["/bin/true"]}}}).encode()
    local = threading.local()
    errors: list[str] = []
    try:
        ports_file = home / "run" / "ports.json"
        deadline = time.monotonic() + 90
        while not (ports_file.exists() and ports_file.read_text().strip()):
            if gw.poll() is not None or time.monotonic() > deadline:
                return [{"case": case, "error": "the gateway did not start"}]
            time.sleep(0.05)
        url = f"http://127.0.0.1:{json.loads(ports_file.read_text())['gateway']}/rpc"

        def call() -> None:
            c = getattr(local, "c", None)
            if c is None:
                c = local.c = httpx.Client(headers={"Authorization": f"Bearer {key}",
                                                    "Content-Type": "application/json"}, timeout=60)
            r = c.post(url, content=body).json()
            if "result" not in r and len(errors) < 3:
                errors.append(json.dumps(r)[:300])

        def spawn() -> None:
            _spawn_ns(BWRAP_HARDENED)

        _window(call, clients, 1.0)                     # warm-up: connections, pool, caches
        ours = anchor = 0
        for _ in range(2):
            ours += _window(call, clients, seconds / 2)
            anchor += _window(spawn, clients, seconds / 2) if bwrap else 0
    finally:
        gw.terminate()
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    r: dict[str, Any] = {"case": case, "per_s": round(ours / seconds, 1), "clients": clients}
    if bwrap:
        # ratio as everywhere: ours / anchor in time per call (lower is better)
        r.update(anchor=f"{clients} concurrent hardened bwrap /bin/true spawns",
                 anchor_per_s=round(anchor / seconds, 1), ratio=round(anchor / ours, 3) if ours else None)
    if errors:
        r["errors"] = errors
    return [r]
