"""Every complete run exits 0 (issue 15, item 4).

A complete run used to end with rc 134 now and then, after writing correct
results: ``terminate called after throwing an instance of ''`` /
``FATAL: exception not rethrown`` / ``Fatal Python error: Aborted``. The
cause: a thread inside C++ (JAX's, tf.data's) while the interpreter
finalises. Python 3.11 ends such a thread with ``pthread_exit`` when it
next takes the GIL; the forced unwind meets a C++ frame that swallows it,
and glibc aborts. The old code left its batch prefetch thread running into
the teardown, and buffers were being freed on XLA's threads. Measured with
the code before the fix (5a178ba), 3 tiny complete runs at a time on 2
cores: 2 aborts in 32 runs; alone, 0 in 24.

``run_errors.exit_now`` ends the process with ``os._exit`` once everything is
written, so no thread ever meets a finalising interpreter.

- ``test_exit_0_with_a_thread_inside_jax_at_exit`` makes the race certain:
  a thread that keeps running a jitted function from the end of the
  evaluation on. The code before the fix aborted with it in 3 of 3 runs, as
  does today's with ``exit_now`` replaced by ``sys.exit``; today's: 0 of 3.
- ``test_complete_runs_all_exit_0`` (slow, ``make test-slow``): 14 plain
  complete runs with the real evaluation; a 1-in-5 crash survives them with
  probability 0.8 ** 14 = 4.4 %. ``benchmarks/fault_sweep.py --exit-runs N``
  does the same beside its other faults.
"""

import json
import os
import subprocess
import sys

import pytest

import support
from support import data_dir  # noqa: F401  (fixture)

# Runs hcl_jax.main with the evaluation replaced by: start a thread that runs a
# jitted function without end (GIL released inside XLA's C++), then return
# FAKE_EVAL. The run then writes results.json and exits with that thread busy.
_BUSY_AT_EXIT = (
    "import threading\n"
    "import jax, numpy as np\n"
    "from hcl_jax.evaluation import protocol as evaluate\n"
    "matmul = jax.jit(lambda a: (a @ a).sum())\n"
    "x = np.ones((128, 128), np.float32)\n"
    "def busy():\n"
    "  while True:\n"
    "    matmul(x).block_until_ready()\n"
    "def evaluate_then_leave_a_thread_busy(*args, **kwargs):\n"
    "  matmul(x).block_until_ready()\n"
    "  threading.Thread(target=busy, daemon=True, name='busy_in_jax').start()\n"
    f"  return dict({support.FAKE_EVAL!r})\n"
    "evaluate.evaluate_encoder = evaluate_then_leave_a_thread_busy\n"
    "from absl import app\n"
    "from hcl_jax import main\n"
    "app.run(main.main)\n")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("HCL_EXIT_RUNS", "14"))
_TINY = {
    "image_size": support.DIGITS_TEST_SIDE, "batch_size": 64, "num_epochs": 1,
    "model.width_multiplier": 0.0625, "model.projection_hidden_dim": 16,
    "model.projection_dim": 8, "eval.linear_epochs": 2, "eval.knn_k": 10,
    "checkpoint_every_steps": 5,
}


def _args(data_dir, workdir, **overrides):
  values = {**_TINY, **overrides}
  return (["--config", os.path.join(_ROOT, "configs", "digits.py"), "--workdir", str(workdir),
           f"--config.data_dir={data_dir}"] + [f"--config.{k}={v}" for k, v in values.items()])


@pytest.mark.xdist_group("subprocess")
def test_exit_0_with_a_thread_inside_jax_at_exit(data_dir, tmp_path):  # noqa: F811
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "-c", _BUSY_AT_EXIT, *_args(data_dir, workdir)],
                          cwd=_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS="cpu"))
  output = result.stdout + result.stderr
  assert "terminate called" not in output and "Fatal Python error" not in output, output[-3000:]
  assert result.returncode == 0, output[-3000:]
  with open(workdir / "results.json") as f:
    assert json.load(f)["linear_top1"] == support.FAKE_EVAL["linear_top1"]


@pytest.mark.slow
def test_complete_runs_all_exit_0(data_dir, tmp_path):  # noqa: F811
  codes = []
  for i in range(RUNS):
    workdir = tmp_path / f"run{i}"
    result = subprocess.run([sys.executable, "-m", "hcl_jax.main", *_args(data_dir, workdir)],
                            cwd=_ROOT, capture_output=True, text=True, timeout=900)
    codes.append(result.returncode)
    assert (workdir / "results.json").is_file(), result.stderr[-3000:]
    if result.returncode != 0:
      print(result.stderr[-3000:])
  assert codes == [0] * RUNS, codes
