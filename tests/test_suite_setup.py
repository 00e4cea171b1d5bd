"""The test suite's own machinery: `make test`'s xdist groups take effect.

`make test` runs `pytest -n 2 --dist loadgroup`. Tests that start processes,
or share an expensive module fixture (test_main.py's straight run,
test_rehearse_pod.py's reference run), carry an ``xdist_group`` mark so that
one worker runs them all: the fixture is built once, and the 2 cores are not
oversubscribed. With pytest 9.2 and xdist 3.8 the mark silently did nothing
(pytest-dev/pytest-xdist#1386): every straight run was built on both workers.
Under xdist with loadgroup, the scheduler sees a grouped test by its node id's
``@group`` suffix; this test fails when that suffix is missing.
"""

import pytest


@pytest.mark.xdist_group("subprocess")
def test_xdist_group_reaches_the_scheduler(request):
  if request.config.getoption("loadgroup", default=False):  # set on xdist workers of loadgroup
    assert request.node.nodeid.endswith("@subprocess"), request.node.nodeid
