"""The README's code runs: its python blocks, in order, on 8 CPU devices.

A fresh interpreter (the snippets call jax.set_mesh, global state), then the
claims made in the text are checked against unsharded computations.
"""

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

CHECKS = r"""
import numpy as np
hx1, hx2, hw = (np.asarray(a) for a in (x1, x2, w))
# Every value against the unsharded loss on host arrays (one device).
cpu = jax.devices()[0]
with jax.set_mesh(jax.make_mesh((1,), ("data",), devices=[cpu])):
  ref_loss, ref_grad = jax.value_and_grad(loss_fn)(hw, hx1, hx2)
  ref_sweep = [losses.hcl_loss(hx1 @ hw, hx2 @ hw, beta=float(b)) for b in np.asarray(betas)]
  ref_dlogt = jax.grad(lambda lt: losses.nt_xent_loss(hx1 @ hw, hx2 @ hw,
                                                      temperature=jnp.exp(lt)))(np.log(0.5))
assert jax.device_count() == 8
np.testing.assert_allclose(loss, ref_loss, rtol=2e-6)
np.testing.assert_allclose(loss_sm, ref_loss, rtol=2e-6)
np.testing.assert_allclose(grad_w, ref_grad, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(grad_sm, ref_grad, rtol=1e-5, atol=1e-6)  # no psum, no 8x
np.testing.assert_allclose(sweep, ref_sweep, rtol=2e-6)
np.testing.assert_allclose(grads["log_t"], ref_dlogt, rtol=1e-5)
print("README OK")
"""


def readme_python_blocks():
  return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_snippets_run_and_are_right(tmp_path):
  blocks = readme_python_blocks()
  assert len(blocks) >= 4
  script = "\n".join(blocks) + CHECKS
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=tmp_path, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().endswith("README OK")
