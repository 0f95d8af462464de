"""`stockade serve` plus the test-only sandbox capabilities (the escape suite's gateway).

Usage: python serve_testcaps.py HOME SWITCH CANARY. Same build/serve as the CLI, in this
process's main thread; only the registry gains test.pyexec / test.echo, and the sandbox part
builds a TestingExecutor (the test zygote entry, which loads their implementations and honours
the layer-off list in the file SWITCH) instead of the shipped one.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sandbox import attack_caps  # noqa: E402
from tests.sandbox.testing import TestingExecutor  # noqa: E402

from stockade.core.home import Home  # noqa: E402
from stockade.gateway import service  # noqa: E402
from stockade.sandbox import setup as sandbox_setup  # noqa: E402


def main() -> None:
    home = Home.at(sys.argv[1])
    switch, canary = sys.argv[2], sys.argv[3]

    def executor(*a: Any, **kw: Any) -> TestingExecutor:
        return TestingExecutor(*a, switch=switch, modules=(attack_caps.__file__,), canary=canary, **kw)

    sandbox_setup.SandboxExecutor = executor  # type: ignore[misc,assignment]
    gw = service.build(home, port=0, dashboard_port=0)
    gw.pipeline.registry.add(attack_caps.definitions(), attack_caps.IMPLS)
    asyncio.run(service.serve(gw))


if __name__ == "__main__":
    main()
