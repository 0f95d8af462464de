"""Egress fixtures: the module-wide test hosts (see topo.py)."""

from __future__ import annotations

import pytest
from tests.conftest import need_root
from tests.egress.topo import A_IP, B_IP, META_IP, P_IP, TestHost


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """a: allowed host (8080 allowed, 8081 not); b: another public-looking host; p: a private-range
    host; m: 169.254.169.254 (metadata). Each runs HTTP servers that log every connection."""
    need_root()
    d = tmp_path_factory.mktemp("egnet")
    hosts = {}
    try:
        hosts["a"] = TestHost(1, A_IP, d).up().serve_http(8080, 8081)
        hosts["b"] = TestHost(2, B_IP, d).up().serve_http(8080)
        hosts["p"] = TestHost(3, P_IP, d).up().serve_http(8080)
        hosts["m"] = TestHost(4, META_IP, d).up().serve_http(80, 8080)
        yield hosts
    finally:
        for h in hosts.values():
            h.down()
