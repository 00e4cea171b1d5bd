"""hcl_loss, dcl_loss, nt_xent_loss against float64 oracles written from the formula."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcl_jax import losses


# ----------------------------------------------------------------------------
# Oracles, written from the formula in docs/reference.md, in exp space like
# the published code, in float64 (where exp space is safe over our grid:
# the largest exponent is (beta + 1) / t = 180 < 709).
# ----------------------------------------------------------------------------
def oracle_loss(z1, z2, t, tau, beta, detach_weights=False, xp=np, s_offset=0.0):
  """Float64 reference loss. xp=np for values, xp=jnp (x64) for gradients.

  s_offset (a constant added to s) lets a test evaluate the exact formula at
  similarities rounded to float32, to measure the formula's own conditioning.
  """
  z = xp.concatenate([z1, z2], axis=0)
  return oracle_loss_of_unit_rows(z / xp.linalg.norm(z, axis=1, keepdims=True), t, tau, beta,
                                  detach_weights, xp=xp, s_offset=s_offset)


def oracle_loss_of_unit_rows(u, t, tau, beta, detach_weights=False, xp=np, s_offset=0.0):
  """oracle_loss of the already-normalised rows u = concat(z1, z2) / |.|, [2B, D]."""
  n = u.shape[0]
  b = n // 2
  big_n = n - 2
  s = u @ u.T / t + s_offset
  idx = np.arange(n)
  pos_idx = (idx + b) % n
  neg = np.ones((n, n), bool)
  neg[idx, idx] = False
  neg[idx, pos_idx] = False
  pos = xp.exp(s[idx, pos_idx])
  w = xp.exp(beta * s)
  if detach_weights:
    w = jax.lax.stop_gradient(w)
  w = xp.where(neg, w, 0.0)
  r = big_n * xp.sum(w * xp.exp(s), axis=1) / xp.sum(w, axis=1)
  ng = xp.maximum((r - tau * big_n * pos) / (1 - tau), big_n * xp.exp(-1.0 / t))
  # -log(pos / (pos + Ng)), written as log1p so that float64 resolves losses
  # far below its epsilon (well-separated positives at low temperature).
  return xp.mean(xp.log1p(ng / pos))


@functools.partial(jax.jit, static_argnames="detach_weights")
def _oracle_grads_jit(z1, z2, t, tau, beta, s_offset, detach_weights):
  # Hyperparameters traced: one compile per shape, not per grid point.
  return jax.grad(
      lambda a, b: oracle_loss(a, b, t, tau, beta, detach_weights, xp=jnp, s_offset=s_offset),
      argnums=(0, 1))(z1, z2)


def oracle_grads(z1, z2, t, tau, beta, detach_weights=False, s_offset=0.0):
  with jax.enable_x64(True):
    f64 = lambda x: jnp.asarray(x, jnp.float64)
    g = _oracle_grads_jit(f64(z1), f64(z2), f64(t), f64(tau), f64(beta), f64(s_offset),
                          detach_weights)
    return np.asarray(g[0]), np.asarray(g[1])


def float32_similarity_error(z1, z2, t):
  """s as any float32 evaluation forms it (normalise, matmul) minus the exact s."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  z32 = np.concatenate([z1, z2]).astype(np.float32)
  z32 /= np.linalg.norm(z32, axis=1, keepdims=True)
  return (z32 @ z32.T).astype(np.float64) / t - z @ z.T / t


# Our float32 gradient's relative error, measured over the grid below (B = 2,
# 17, 256 and 600; `make test` runs it): at most 3.0e-6 wherever the float32
# floor (next) is under 3.3e-6, and at most 1.8x the floor where it is larger.
# The bounds are those with a margin: 2x and 3x / 1.8 = 1.7x.
GRADIENT_TOLERANCE = 6e-6
FLOOR_MARGIN = 3.0


def float32_gradient_floor(z1, z2, t, tau, beta, exact, samples=4):
  """How far the exact float64 gradient moves when s carries float32 rounding.

  Any float32 evaluation forms s with a rounding error of the size of a float32
  normalise and matmul. One sample of that error is the actual float32 one;
  the others flip its signs at random (symmetrically: s stays symmetric). Where
  an anchor sits near the clamp (the gradient jumps) or R - tau+ N pos nearly
  cancels, the samples differ by up to 25x, so the floor is their maximum.
  """
  error = float32_similarity_error(z1, z2, t)
  rng = np.random.default_rng(0)
  floor = 0.0
  for k in range(samples):
    sign = np.ones_like(error)
    if k:
      sign = np.triu(rng.choice([-1.0, 1.0], size=error.shape))
      sign = sign + np.triu(sign, 1).T
    floor = max(floor, relative_error(
        oracle_grads(z1, z2, t, tau, beta, s_offset=error * sign), exact))
  return floor


def gradient_tolerance(z1, z2, t, tau, beta):
  """The exact gradient and the bound on our relative error from it.

  GRADIENT_TOLERANCE, or FLOOR_MARGIN x the float32 floor only where that is
  larger: at low t with high beta or tau+ the gradient is ill-conditioned
  (measured floors up to 1.1e-4), and no float32 evaluation can do better.
  """
  exact = oracle_grads(z1, z2, t, tau, beta)
  floor = float32_gradient_floor(z1, z2, t, tau, beta, exact)
  return exact, max(GRADIENT_TOLERANCE, FLOOR_MARGIN * floor)


@jax.jit
def loss_and_grads(z1, z2, t, tau, beta):
  """Our loss and gradients; hyperparameters traced, so one compile per shape."""
  return jax.value_and_grad(
      lambda a, b: losses.hcl_loss(a, b, temperature=t, tau_plus=tau, beta=beta),
      argnums=(0, 1))(z1, z2)


def projections(b, d=32, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d))
  # Correlated second views, as trained projections are, from close (cosine
  # ~0.96) to loose (~0.3), so every grid point has clamped and unclamped anchors.
  noise_scale = np.linspace(0.3, 3.0, b)[:, None]
  z2 = z1 + noise_scale * rng.normal(size=(b, d))
  return z1.astype(dtype), z2.astype(dtype)


def relative_error(actual, expected):
  actual = np.concatenate([np.ravel(a) for a in actual])
  expected = np.concatenate([np.ravel(e) for e in expected])
  return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# ----------------------------------------------------------------------------
# Hand-worked cases.
# ----------------------------------------------------------------------------
def test_hand_worked_b2_hcl():
  # Rows r0=(1,0), r1=(0,1) (view 1) and r2=(.6,.8), r3=(.8,.6) (view 2).
  # Positives 0<->2, 1<->3, every positive cosine 0.6. Negative cosines:
  # anchors 0, 1 see {0, 0.8}; anchors 2, 3 see {0.8, 0.96}. t = 0.5 doubles them.
  z1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  z2 = np.array([[0.6, 0.8], [0.8, 0.6]], np.float32)
  t, tau, beta, n = 0.5, 0.1, 1.0, 2

  def anchor(neg_s, pos_s):
    r = n * sum(math.exp(beta * s) * math.exp(s) for s in neg_s) / sum(math.exp(beta * s) for s in neg_s)
    ng = max((r - tau * n * math.exp(pos_s)) / (1 - tau), n * math.exp(-1 / t))
    return -math.log(math.exp(pos_s) / (math.exp(pos_s) + ng))

  # By hand: anchor 0: R = 2 (1 + e^3.2) / (1 + e^1.6) = 8.57799,
  # Ng = (R - 0.2 e^1.2) / 0.9 = 8.79330, loss = log(1 + Ng / e^1.2) = 1.29433.
  # Anchor 2: R = 2 (e^3.2 + e^3.84) / (e^1.6 + e^1.92) = 12.07034,
  # Ng = 12.67369, loss = log(1 + Ng / e^1.2) = 1.57218. Mean: 1.43325.
  expected = (2 * anchor([0.0, 1.6], 1.2) + 2 * anchor([1.6, 1.92], 1.2)) / 4
  assert expected == pytest.approx(1.43325, abs=2e-5)
  got = losses.hcl_loss(z1, z2, temperature=t, tau_plus=tau, beta=beta)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_hand_worked_b2_clamp_binds_and_has_zero_gradient():
  # Identical views, orthogonal images: pos = e^{1/t}, every negative s = 0, so
  # R = N = 2 and tau+ N pos = 0.5 * 2 * e^2 > R: Ng is clamped to N e^{-1/t}.
  # loss = -log(e^2 / (e^2 + 2 e^-2)) = log(1 + 2 e^-4).
  z = np.eye(2, dtype=np.float32)
  loss, metrics = losses.hcl_loss_and_metrics(z, z, temperature=0.5, tau_plus=0.5, beta=1.0)
  np.testing.assert_allclose(loss, math.log1p(2 * math.exp(-4)), rtol=1e-6)
  assert float(metrics["clamped_fraction"]) == 1.0
  np.testing.assert_allclose(metrics["positive_similarity"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["negative_similarity"], 0.0, atol=1e-7)
  # With Ng constant the loss is log(1 + c e^{-s_pos}); its gradient only moves
  # the positive: compare with the oracle (exp space, clamp via maximum).
  grads = jax.jit(jax.grad(lambda a, b: losses.hcl_loss(a, b, temperature=0.5, tau_plus=0.5),
                           (0, 1)))(z + 0.01, z - 0.02)
  expected = oracle_grads(z + 0.01, z - 0.02, 0.5, 0.5, 1.0)
  assert relative_error(grads, expected) < 1e-5


def test_nt_xent_hand_worked():
  # Same rows as the HCL hand case: anchor 0 has pos s 1.2, negatives {0, 1.6}.
  z1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  z2 = np.array([[0.6, 0.8], [0.8, 0.6]], np.float32)
  a01 = math.log1p((math.exp(0.0) + math.exp(1.6)) / math.exp(1.2))
  a23 = math.log1p((math.exp(1.6) + math.exp(1.92)) / math.exp(1.2))
  np.testing.assert_allclose(losses.nt_xent_loss(z1, z2, temperature=0.5), (a01 + a23) / 2, rtol=1e-6)


# ----------------------------------------------------------------------------
# Identities between the losses.
# ----------------------------------------------------------------------------
def test_beta_zero_is_dcl_and_dcl_tau_zero_is_nt_xent():
  z1, z2 = projections(24, seed=1)
  np.testing.assert_allclose(
      losses.dcl_loss(z1, z2, temperature=0.3, tau_plus=0.2),
      losses.hcl_loss(z1, z2, temperature=0.3, tau_plus=0.2, beta=0.0), rtol=1e-7)
  np.testing.assert_allclose(
      losses.nt_xent_loss(z1, z2, temperature=0.3),
      losses.dcl_loss(z1, z2, temperature=0.3, tau_plus=0.0), rtol=1e-7)
  np.testing.assert_allclose(
      losses.dcl_loss(z1, z2, temperature=0.3, tau_plus=0.2),
      oracle_loss(z1.astype(np.float64), z2.astype(np.float64), 0.3, 0.2, 0.0), rtol=1e-5)


@functools.partial(jax.jit, static_argnames=("name", "block_size"))
def baseline_loss_and_grads(z1, z2, t, tau, name, block_size):
  """dcl_loss or nt_xent_loss and its gradients; t and tau+ traced."""
  if name == "dcl":
    fn = lambda a, b: losses.dcl_loss(a, b, temperature=t, tau_plus=tau, block_size=block_size)
  else:
    fn = lambda a, b: losses.nt_xent_loss(a, b, temperature=t, block_size=block_size)
  return jax.value_and_grad(fn, argnums=(0, 1))(z1, z2)


@pytest.mark.parametrize("name,t,tau", [
    ("dcl", 0.3, 0.2), ("dcl", 0.2, 0.5), ("dcl", 1.0, 0.0), ("nt_xent", 0.3, 0.0),
    ("nt_xent", 1.0, 0.0)])
def test_dcl_and_nt_xent_match_float64_oracle(name, t, tau):
  # dcl_loss and nt_xent_loss are hcl_loss at a concrete beta = 0 (and tau+ =
  # 0), a path of their own (no weight exps): the identities above compare
  # it with itself, so check it against the formula, values and gradients.
  z1, z2 = projections(40, seed=17)
  expected = oracle_loss(z1.astype(np.float64), z2.astype(np.float64), t, tau, 0.0)
  expected_grads, tolerance = gradient_tolerance(z1, z2, t, tau, 0.0)
  for block_size in (None, 16):  # one block; 80 anchors in five blocks of 16
    value, grads = baseline_loss_and_grads(z1, z2, t, tau, name, block_size)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert relative_error(grads, expected_grads) <= tolerance, block_size


def test_nt_xent_is_softmax_cross_entropy_with_self_masked():
  # SimCLR as usually written: cross-entropy over the 2B - 1 other rows.
  z1, z2 = projections(16, seed=2)
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ z.T / 0.2
  np.fill_diagonal(logits, -np.inf)
  targets = (np.arange(32) + 16) % 32
  log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  expected = -np.mean(log_softmax[np.arange(32), targets])
  np.testing.assert_allclose(losses.nt_xent_loss(z1, z2, temperature=0.2), expected, rtol=1e-5)


def test_inputs_need_not_be_normalised():
  z1, z2 = projections(8, seed=3)
  np.testing.assert_allclose(
      losses.hcl_loss(z1, z2), losses.hcl_loss(3.0 * z1, 0.25 * z2), rtol=1e-6)


# ----------------------------------------------------------------------------
# Accuracy: float32 within 1e-5 of float64, values and gradients, over the grid.
# ----------------------------------------------------------------------------
TEMPERATURES = (0.05, 0.1, 0.5, 1.0)
BETAS = (0.0, 1.0, 6.0, 8.0)
TAU_PLUS = (0.0, 0.1, 0.5, 0.9)


@pytest.mark.parametrize("batch", [2, 17, 256])
def test_float32_matches_float64_over_grid(batch):
  z1, z2 = projections(batch, d=128, seed=batch)
  z1_64, z2_64 = z1.astype(np.float64), z2.astype(np.float64)
  for t in TEMPERATURES:
    for beta in BETAS:
      for tau in TAU_PLUS:
        value, grads = loss_and_grads(z1, z2, t, tau, beta)
        expected = oracle_loss(z1_64, z2_64, t, tau, beta)
        where = f"B={batch} t={t} beta={beta} tau+={tau}"
        assert np.isfinite(value), where
        assert abs(float(value) - expected) <= 1e-5 * abs(expected), (where, float(value), expected)
        expected_grads, tolerance = gradient_tolerance(z1, z2, t, tau, beta)
        assert relative_error(grads, expected_grads) <= tolerance, (where, tolerance)


def _check_large_batch(batch, t, beta, tau):
  z1, z2 = projections(batch, d=128, seed=7)
  value, grads = loss_and_grads(z1, z2, t, tau, beta)
  expected = oracle_loss(z1.astype(np.float64), z2.astype(np.float64), t, tau, beta)
  assert abs(float(value) - expected) <= 1e-5 * abs(expected)
  expected_grads, tolerance = gradient_tolerance(z1, z2, t, tau, beta)
  assert relative_error(grads, expected_grads) <= tolerance


@pytest.mark.parametrize("t,beta,tau", [(0.05, 6.0, 0.1), (1.0, 0.0, 0.0)])
def test_float32_matches_float64_with_a_padded_last_block(t, beta, tau):
  # B = 600: the [1200, 1200] matrix is too big for one block, so 1200 anchors
  # go in blocks of DEFAULT_BLOCK_SIZE = 256, the fifth padded with 80 rows.
  assert 1200**2 > losses._ONE_BLOCK_MAX_ENTRIES and 1200 % losses.DEFAULT_BLOCK_SIZE == 176
  _check_large_batch(600, t, beta, tau)


@pytest.mark.slow
@pytest.mark.parametrize("t,beta,tau", [(0.05, 6.0, 0.1), (1.0, 0.0, 0.0)])
def test_float32_matches_float64_at_batch_4096(t, beta, tau):
  _check_large_batch(4096, t, beta, tau)


def test_low_temperature_high_beta_is_finite_where_exp_space_float32_is_not():
  # Trained projections cluster by class: same-class negatives have cosine
  # ~0.9, so exp((beta + 1) s) = e^126 overflows float32 in exp space.
  rng = np.random.default_rng(4)
  centres = rng.normal(size=(4, 128))
  z1 = (centres[np.arange(64) % 4] + 0.3 * rng.normal(size=(64, 128))).astype(np.float32)
  z2 = (z1 + 0.3 * rng.normal(size=(64, 128))).astype(np.float32)
  t, tau, beta = 0.05, 0.1, 6.0
  with np.errstate(all="ignore"):
    exp_space_f32 = oracle_loss(z1, z2, np.float32(t), np.float32(tau), np.float32(beta))
  assert not np.isfinite(exp_space_f32)  # what the published code returns here
  value, grads = loss_and_grads(z1, z2, t, tau, beta)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  expected = oracle_loss(z1.astype(np.float64), z2.astype(np.float64), t, tau, beta)
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_gradients_flow_through_hardness_weights():
  z1, z2 = projections(32, seed=5)
  _, grads = loss_and_grads(z1, z2, 0.5, 0.1, 1.0)
  attached = oracle_grads(z1, z2, 0.5, 0.1, 1.0)
  detached = oracle_grads(z1, z2, 0.5, 0.1, 1.0, detach_weights=True)
  assert relative_error(attached, detached) > 1e-3  # the choice matters
  assert relative_error(grads, attached) < 1e-5


def test_oracle_gradient_matches_finite_differences():
  # Validates the gradient oracle itself, in float64, by central differences.
  z1, z2 = projections(3, d=4, seed=6)
  z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
  g1, _ = oracle_grads(z1, z2, 0.2, 0.3, 2.0)
  eps = 1e-6
  for i, j in [(0, 0), (1, 2), (2, 3)]:
    up, down = z1.copy(), z1.copy()
    up[i, j] += eps
    down[i, j] -= eps
    fd = (oracle_loss(up, z2, 0.2, 0.3, 2.0) - oracle_loss(down, z2, 0.2, 0.3, 2.0)) / (2 * eps)
    np.testing.assert_allclose(g1[i, j], fd, rtol=1e-6, atol=1e-9)


def test_check_grads_in_float64():
  z1, z2 = projections(4, d=3, seed=8)
  with jax.enable_x64(True):
    args = (jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64))
    for fn in (lambda a, b: losses.hcl_loss(a, b, temperature=0.3, tau_plus=0.2, beta=2.0),
               lambda a, b: losses.dcl_loss(a, b, temperature=0.3, tau_plus=0.2),
               lambda a, b: losses.nt_xent_loss(a, b, temperature=0.3)):
      jax.test_util.check_grads(jax.jit(fn), args, order=1, modes=("rev",))


def test_bfloat16_inputs_give_finite_float32_loss():
  z1, z2 = projections(64, d=128, seed=9)
  b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  value = losses.hcl_loss(b1, b2, temperature=0.05, tau_plus=0.1, beta=8.0)
  assert value.dtype == jnp.float32 and np.isfinite(value)
  # Upcast before any arithmetic: exact for the bf16-rounded inputs.
  expected = oracle_loss(np.asarray(b1, np.float64), np.asarray(b2, np.float64), 0.05, 0.1, 8.0)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  grads = jax.jit(jax.grad(lambda a, b: losses.hcl_loss(a, b, temperature=0.05, beta=8.0),
                           (0, 1)))(b1, b2)
  assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


# ----------------------------------------------------------------------------
# Gradients with respect to the hyperparameters (e.g. a learned temperature):
# the loss has a hand-written VJP, so these are checked like the inputs'.
# ----------------------------------------------------------------------------
def oracle_hyperparameter_grads(z1, z2, t, tau, beta):
  with jax.enable_x64(True):
    g = jax.grad(lambda *h: oracle_loss(np.float64(z1), np.float64(z2), *h, xp=jnp),
                 argnums=(0, 1, 2))(jnp.float64(t), jnp.float64(tau), jnp.float64(beta))
    return np.asarray(g)


@pytest.mark.parametrize("t,tau,beta", [(0.5, 0.1, 1.0), (0.2, 0.3, 2.0), (0.5, 0.0, 0.0), (1.0, 0.5, 0.0)])
def test_hyperparameter_gradients_match_float64_oracle(t, tau, beta):
  z1, z2 = projections(32, seed=13)
  got = jax.jit(jax.grad(
      lambda *h: losses.hcl_loss(z1, z2, temperature=h[0], tau_plus=h[1], beta=h[2]),
      argnums=(0, 1, 2)))(t, tau, beta)
  np.testing.assert_allclose(np.asarray(got), oracle_hyperparameter_grads(z1, z2, t, tau, beta),
                             rtol=1e-5, atol=1e-6)


def test_hyperparameter_gradients_check_grads_in_float64():
  z1, z2 = projections(5, d=4, seed=14)
  with jax.enable_x64(True):
    a, b = jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64)
    fn = lambda t, tau, beta: losses.hcl_loss(a, b, temperature=t, tau_plus=tau, beta=beta)
    jax.test_util.check_grads(jax.jit(fn), (jnp.float64(0.3), jnp.float64(0.2), jnp.float64(2.0)),
                              order=1, modes=("rev",))


def test_clamped_anchor_has_temperature_gradient_of_the_clamp():
  # All anchors clamped: loss = mean log(1 + N e^{-1/t} / e^{s_pos}), s_pos = 1/t
  # (identical views): d/dt log(1 + N e^{-2/t}) = (2/t^2) N e^{-2/t} / (1 + N e^{-2/t}).
  z = np.eye(2, dtype=np.float32)
  t = 0.5
  got = jax.grad(lambda t: losses.hcl_loss(z, z, temperature=t, tau_plus=0.5))(t)
  c = 2 * math.exp(-2 / t)
  np.testing.assert_allclose(got, (2 / t**2) * c / (1 + c), rtol=1e-6)


def test_traced_beta_zero_gradient_equals_dcl():
  # A traced beta = 0 takes the general path (weights e^{0 x} = 1).
  z1, z2 = projections(16, seed=15)
  traced = jax.jit(jax.grad(lambda a, beta: losses.hcl_loss(a, z2, beta=beta)))(z1, 0.0)
  static = jax.jit(jax.grad(lambda a: losses.dcl_loss(a, z2)))(z1)
  np.testing.assert_allclose(traced, static, rtol=1e-5, atol=1e-7)


def test_vmap_of_gradients_over_beta():
  z1, z2 = projections(16, seed=16)
  betas = jnp.array([0.0, 1.0, 4.0])
  grad_fn = jax.grad(lambda a, beta: losses.hcl_loss(a, z2, temperature=0.2, beta=beta))
  swept = jax.jit(jax.vmap(grad_fn, in_axes=(None, 0)))(z1, betas)
  for i, beta in enumerate(betas):
    np.testing.assert_allclose(swept[i], oracle_grads(z1, z2, 0.2, 0.1, float(beta))[0],
                               rtol=1e-4, atol=1e-5 * np.abs(swept[i]).max())


# ----------------------------------------------------------------------------
# Transformations: jit traced once, vmap over hyperparameters.
# ----------------------------------------------------------------------------
def test_jit_traces_once_per_shape():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(z1, z2, t, tau, beta):
    return losses.hcl_loss(z1, z2, temperature=t, tau_plus=tau, beta=beta)

  z1, z2 = projections(8, seed=10)
  for t, tau, beta in [(0.5, 0.1, 1.0), (0.1, 0.0, 6.0), (1.0, 0.5, 0.0)]:
    expected = oracle_loss(z1.astype(np.float64), z2.astype(np.float64), t, tau, beta)
    np.testing.assert_allclose(step(z1, z2, t, tau, beta), expected, rtol=1e-5)


def test_vmap_over_beta_sweep():
  z1, z2 = projections(16, seed=11)
  betas = jnp.array([0.0, 0.5, 1.0, 2.0, 6.0])
  sweep = jax.jit(jax.vmap(lambda b: losses.hcl_loss(z1, z2, temperature=0.2, beta=b)))(betas)
  expected = [oracle_loss(z1.astype(np.float64), z2.astype(np.float64), 0.2, 0.1, float(b))
              for b in betas]
  np.testing.assert_allclose(sweep, expected, rtol=1e-5)


def test_vmap_over_batch_of_projections():
  z = np.stack([np.stack(projections(8, seed=s)) for s in range(3)])  # [3, 2, 8, 32]
  batched = jax.jit(jax.vmap(lambda p: losses.hcl_loss(p[0], p[1])))(z)
  expected = [oracle_loss(p[0].astype(np.float64), p[1].astype(np.float64), 0.5, 0.1, 1.0) for p in z]
  np.testing.assert_allclose(batched, expected, rtol=1e-5)


# ----------------------------------------------------------------------------
# Invalid input: a ValueError that names the value and what is allowed.
# ----------------------------------------------------------------------------
_Z = np.ones((4, 8), np.float32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), r"temperature must be > 0; got 0\.0"),
    (dict(temperature=-0.5), r"temperature must be > 0; got -0\.5"),
    (dict(temperature=float("nan")), r"temperature must be a finite number"),
    (dict(tau_plus=1.0), r"tau_plus must be in \[0, 1\); got 1\.0"),
    (dict(tau_plus=-0.1), r"tau_plus must be in \[0, 1\); got -0\.1"),
    (dict(beta=-1.0), r"beta must be >= 0; got -1\.0"),
    (dict(beta=np.array([1.0, -2.0])), r"beta must be >= 0"),
    (dict(beta="hard"), r"beta must be a real number"),
])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.hcl_loss(_Z, _Z, **kwargs)


@pytest.mark.parametrize("z1,z2,match", [
    (np.ones((1, 8), np.float32), np.ones((1, 8), np.float32), r"B must be >= 2.*got B = 1"),
    (np.ones((4, 8), np.float32), np.ones((4, 7), np.float32), r"same shape.*\(4, 8\) and \(4, 7\)"),
    (np.ones((4, 8), np.float32), np.ones((5, 8), np.float32), r"same shape"),
    (np.ones((4, 8, 1), np.float32), np.ones((4, 8, 1), np.float32), r"rank 2.*\(4, 8, 1\)"),
    (np.ones((8,), np.float32), np.ones((8,), np.float32), r"rank 2"),
    (np.ones((4, 8), np.int32), np.ones((4, 8), np.int32), r"floating dtype.*int32"),
    ([[1.0, 2.0]], [[1.0, 2.0]], r"must be an array"),
])
def test_bad_projections(z1, z2, match):
  for fn in (losses.hcl_loss, losses.dcl_loss, losses.nt_xent_loss):
    with pytest.raises(ValueError, match=match):
      fn(z1, z2)


def test_traced_hyperparameters_are_not_rejected():
  # Inside jit the values are unknown; an out-of-range traced value is the
  # caller's business (a sweep must not be refused for being traced).
  z1, z2 = projections(8, seed=12)
  value = jax.jit(lambda t: losses.hcl_loss(z1, z2, temperature=t))(0.5)
  np.testing.assert_allclose(value, losses.hcl_loss(z1, z2, temperature=0.5), rtol=1e-6)
