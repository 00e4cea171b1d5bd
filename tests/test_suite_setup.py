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


_SLEEPER = """
import faulthandler, signal, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
def sleeping_here():
  time.sleep(1000)
sleeping_here()
"""


def test_a_multi_process_test_past_its_bound_fails_showing_every_stack():
  """support.collect_processes, the bound of the multi-process tests: two
  sleeping processes fail the test within the bound, with both stacks."""
  import subprocess
  import sys
  import time

  import support

  procs = [subprocess.Popen([sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  started = time.monotonic()
  with pytest.raises(pytest.fail.Exception) as failed:
    support.collect_processes(procs, timeout_s=2)
  assert time.monotonic() - started < 2 + 20
  report = str(failed.value)
  assert "2-process run exceeded 2 s" in report
  for index in (0, 1):
    section = report.split(f"process {index}:\n")[1]
    assert "(most recent call first)" in section and "in sleeping_here" in section, report
  assert all(p.poll() is not None for p in procs)
