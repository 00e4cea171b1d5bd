"""Two processes, one checkpoint directory: every host takes the same branch.

Each process judges each step itself (metadata, restore, CRC-32) and the
verdicts are all-gathered (``checkpoint_integrity.agreed_verdict``); without that,
the process that sees damage would restore an older step than the other and
the two would meet different barriers (issue 24).
"""

import glob
import json
import os
import socket
import subprocess
import sys

import pytest

import support  # tests/ is on sys.path under pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO_ROOT, "tests", "checkpoint_agreement_worker.py")
_TIMEOUT_S = 240
_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "JAX_LOCAL_DEVICE_IDS")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.xdist_group("subprocess")
def test_a_step_damaged_on_one_host_is_skipped_on_every_host(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
  env.update(CKPT_DIR=str(tmp_path / "ckpt"), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]),
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
  procs = [subprocess.Popen([sys.executable, WORKER], cwd=REPO_ROOT,
                            env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = support.collect_processes(procs, timeout_s=_TIMEOUT_S)
  results = []
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    lines = [line for line in out.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and len(lines) == 1, f"process {i}:\n{out}"
    results.append(json.loads(lines[0][len("RESULT:"):]))
  # Process 0 read step 2 intact, process 1 did not: both use step 1.
  for r in results:
    assert (r["step"], r["w1"], r["extra"], r["all_steps"]) == (1, 1.0, {"data_step": 1}, [1])
  assert len(glob.glob(str(tmp_path / "ckpt" / "2.unreadable-*"))) == 1
  assert "falling back" in outputs[0] and "step 2" in outputs[0]  # process 0 says why too
