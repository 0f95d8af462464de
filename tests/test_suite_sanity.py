"""Guards on the test harness itself: a broken harness must fail loudly, not pass quietly."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("harness")


def test_xdist_groups_really_group(request: pytest.FixtureRequest) -> None:
    """Tests that share a host-global resource (a test-host address, a route) rely on xdist_group
    to run on one worker. pytest 9 + pytest-xdist 3.8 silently dropped the grouping once; the
    nodeid then lacks the @group suffix and those tests race each other."""
    if not hasattr(request.config, "workerinput"):
        pytest.skip("not running under pytest-xdist (make test runs -n 2 --dist loadgroup)")
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("xdist without --dist loadgroup")
    assert request.node.nodeid.endswith("@harness"), request.node.nodeid
