"""The test-side executor: the shipped SandboxExecutor started on the test zygote entry.

Layer-off switches exist only here and in `testing_zygote.py`: a test writes the layers to
switch off into a file, and this executor sends them with each request to the test zygote.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from stockade.sandbox import Profile
from stockade.sandbox.executor import SandboxExecutor

ZYGOTE_ENTRY = str(Path(__file__).with_name("testing_zygote.py"))


class TestingExecutor(SandboxExecutor):
    """SandboxExecutor on the test zygote; `switch` names a JSON list of layers to switch off."""

    __test__ = False

    def __init__(self, *a: Any, switch: str | None = None, modules: tuple[str, ...] = (),
                 canary: str | None = None, os_fork: bool = False, **kw: Any):
        super().__init__(*a, **kw)
        self.switch = switch
        self.os_fork = os_fork
        self.modules = modules
        self.canary = canary
        self.off: set[str] = set()
        self.faults: set[str] = set()

    def zygote_command(self, fd: int) -> list[str]:
        cfg = {"modules": list(self.modules), "canary": self.canary, "os_fork": self.os_fork}
        return [sys.executable, "-I", "-B", ZYGOTE_ENTRY, str(fd), json.dumps(cfg)]

    def _read_switch(self) -> None:
        if self.switch:
            try:
                self.off = set(json.loads(Path(self.switch).read_text()))
            except (OSError, ValueError):
                self.off = set()

    async def run(self, *a: Any, **kw: Any) -> dict[str, Any]:
        self._read_switch()
        return await super().run(*a, **kw)

    async def _call(self, req: dict[str, Any], profile: Profile, *a: Any, **kw: Any) -> dict[str, Any]:
        req = {**req, "disable": sorted(self.off), "faults": sorted(self.faults)}
        if "output" in self.off:
            profile = replace(profile, max_output_bytes=1 << 34)
        return await super()._call(req, profile, *a, **kw)


def wait_ready(ex: SandboxExecutor, n: int = 1, timeout: float = 30.0) -> list[int]:
    """Poll the zygote until at least `n` pre-armed children are ready; their host pids."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        pids = list(asyncio.run(ex.pool_stats()).get("ready_pids") or [])
        if len(pids) >= n or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)
