"""`stockade serve` plus the test-only sandbox capabilities (the escape suite's gateway).

Usage: python serve_testcaps.py HOME. Same build/serve as the CLI, in this process's main
thread; only the registry gains test.pyexec / test.echo (their implementations reach the
zygote through STOCKADE_SANDBOX_TEST_MODULES).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sandbox import attack_caps  # noqa: E402

from stockade.core.home import Home  # noqa: E402
from stockade.gateway import service  # noqa: E402


def main() -> None:
    home = Home.at(sys.argv[1])
    gw = service.build(home, port=0, dashboard_port=0)
    gw.pipeline.registry.add(attack_caps.definitions(), attack_caps.IMPLS)
    asyncio.run(service.serve(gw))


if __name__ == "__main__":
    main()
