"""Rows of z1/z2 that are exactly zero: finite loss and the exact, finite gradient.

The losses normalise as torch's F.normalize, z / max(|z|, eps) with eps = 1e-12.
For a row with |z| <= eps that map is z / eps, so its gradient is 1 / eps times
the gradient in the normalised row u = z / eps (here u = 0); for the other rows
it is (I - u u^T) / |z| times the gradient in u. The expectation below is that
chain rule applied by hand to a float64 oracle written in terms of the
normalised rows (no normalisation inside it), so it can't share a NaN or a
wrong branch with the code under test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcl_jax import losses
from test_losses import oracle_loss_of_unit_rows  # tests/ is on sys.path under pytest

EPS = 1e-12  # F.normalize's
T, TAU, BETA = 0.5, 0.1, 1.0


def expected_loss_and_grads(z1, z2, t, tau, beta):
  z = np.concatenate([z1, z2]).astype(np.float64)
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  u = z / np.maximum(norms, EPS)
  with jax.enable_x64(True):
    loss, g_u = jax.value_and_grad(
        lambda v: oracle_loss_of_unit_rows(v, t, tau, beta, xp=jnp))(jnp.asarray(u))
  g_u = np.asarray(g_u)
  g_z = np.where(norms > EPS,
                 (g_u - u * np.sum(u * g_u, axis=1, keepdims=True)) / np.maximum(norms, EPS),
                 g_u / EPS)
  b = z1.shape[0]
  return float(loss), g_z[:b], g_z[b:]


def _projections(b=6, d=5, seed=0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d))
  z2 = z1 + 0.5 * rng.normal(size=(b, d))
  return z1.astype(np.float32), z2.astype(np.float32)


LOSSES = {
    "hcl": (functools.partial(losses.hcl_loss, temperature=T, tau_plus=TAU, beta=BETA), TAU, BETA),
    "dcl": (functools.partial(losses.dcl_loss, temperature=T, tau_plus=TAU), TAU, 0.0),
    "nt_xent": (functools.partial(losses.nt_xent_loss, temperature=T), 0.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_rows_give_the_exact_finite_gradient(name):
  loss_fn, tau, beta = LOSSES[name]
  z1, z2 = _projections()
  z1[0] = 0.0   # a zero row in each view, of different images
  z2[3] = 0.0
  loss, (g1, g2) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(z1, z2)
  ref_loss, ref_g1, ref_g2 = expected_loss_and_grads(z1, z2, T, tau, beta)
  assert np.isfinite(np.asarray(g1)).all() and np.isfinite(np.asarray(g2)).all()
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for g, ref in ((g1, ref_g1), (g2, ref_g2)):
    # The zero rows' gradients are ~1e12 (1 / eps), the others O(1): compare per row.
    for row, ref_row in zip(np.asarray(g, np.float64), ref):
      np.testing.assert_allclose(row, ref_row, rtol=1e-4, atol=1e-4 * np.abs(ref_row).max())
  assert np.abs(ref_g1[0]).max() > 1e9  # the zero row's gradient is the 1/eps one, not 0


def test_all_zero_inputs_are_finite():
  z = jnp.zeros((4, 3), jnp.float32)
  loss, grads = jax.jit(jax.value_and_grad(losses.hcl_loss, argnums=(0, 1)))(z, z)
  # Every normalised row is 0: every s_ij = 0, so -log(1 / (1 + Ng)) with
  # Ng = max((N - tau+ N) / (1 - tau+), N e^{-1/t}) = N = 6.
  np.testing.assert_allclose(loss, np.log(7.0), rtol=1e-6)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_normalize_of_zero_row_has_finite_gradient():
  # d/dz sum(w * z / eps) at z = 0 is w / eps.
  w = jnp.asarray([1.0, -2.0, 3.0])
  grad = jax.grad(lambda z: jnp.sum(w * losses.l2_normalize(z)))(jnp.zeros(3))
  np.testing.assert_allclose(grad, w / EPS, rtol=1e-6)
