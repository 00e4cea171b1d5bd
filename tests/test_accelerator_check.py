"""benchmarks/accelerator_check.py --smoke: the one-command accelerator check's
plumbing on a CPU (tiny sizes), with its table's rows and the loss check."""

import os
import re
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # 114-203 s on the 2-core machine: one ResNet-18 step compilation dominates
def test_smoke_check_prints_every_row():
  env = dict(os.environ)
  # One CPU device, as on a plain machine (conftest sets 8 for the other tests).
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "")
  done = subprocess.run([sys.executable, "benchmarks/accelerator_check.py", "--smoke"],
                        cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
  out = done.stdout
  assert done.returncode == 0, out + done.stderr[-3000:]
  assert "failed" not in out and "FAIL" not in out, out
  # Both losses from the same inputs: the published criterion's value is ours.
  for batch in (64, 256):
    row = re.search(rf"^\| HCL loss fwd\+bwd B={batch} \| [\d.]+ ms \(loss ([\d.]+)\) \| "
                    rf"[\d.]+ ms \(loss ([\d.]+)\) \| .* \| ok \|$", out, re.M)
    assert row and abs(float(row[1]) - float(row[2])) <= 1e-3 * float(row[2]), out
  assert re.search(r"^\| resnet18 train step, batch 16 x 2 views, 8 px: ours float32 vs torch "
                   r"float32_channels_last \| [\d.]+ ms \(\d+ img/s; compiled in \d+ s; "
                   r"[\d.e+]+ FLOP\) \| [\d.]+ ms \(\d+ img/s\) \|", out, re.M), out
  # A CPU has no peak in the table: no MFU, rather than a wrong one.
  assert re.search(r"\| - / - \| \|$", out, re.M), out
  assert re.search(r"^\| input pipeline cifar10, two views, \d+ host cores \| \d+ img/s", out,
                   re.M), out
