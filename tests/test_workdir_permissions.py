"""A workdir the user may not write is one line naming the path (issue 15, item 6).

The run is ``python -m hcl_jax.main`` under real file-system permissions:
as this user when it isn't root; as root, the child first drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its capability bounding set
(prctl PR_CAPBSET_DROP), so that after exec root obeys permission bits like
any user (it can still read the interpreter under /root, which ``nobody``
could not).
"""

import ctypes
import os
import stat
import subprocess
import sys
import tempfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _obey_permission_bits():
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
    if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture()
def shared_tmp():
  """A temporary folder with a writable home for the child."""
  path = tempfile.mkdtemp(prefix="hcl_perm_")
  os.mkdir(os.path.join(path, "home"))
  yield path
  for root, dirs, _ in os.walk(path):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o755)
  subprocess.run(["rm", "-rf", path], check=False)


def _run_main(workdir, home):
  env = {**os.environ, "HOME": home, "PYTHONDONTWRITEBYTECODE": "1"}
  return subprocess.run(
      [sys.executable, "-m", "hcl_jax.main", "--config", os.path.join(_ROOT, "configs", "digits.py"),
       "--workdir", workdir],
      cwd=home, env=env, capture_output=True, text=True, timeout=300,
      preexec_fn=_obey_permission_bits if os.geteuid() == 0 else None)


@pytest.mark.xdist_group("subprocess")
@pytest.mark.parametrize("case", ["existing workdir", "workdir to create"])
def test_unwritable_workdir_is_one_line_naming_the_path(shared_tmp, case):
  locked = os.path.join(shared_tmp, "locked")
  os.mkdir(locked)
  workdir = locked if case == "existing workdir" else os.path.join(locked, "run")
  os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
           | stat.S_IROTH | stat.S_IXOTH)  # 0555: no one may write
  result = _run_main(workdir, os.path.join(shared_tmp, "home"))
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert locked in errors[0] and "Permission denied" in errors[0], errors
  assert os.listdir(locked) == []
