"""hcl_jax.graph.losses against a float64 NumPy oracle written from the formula.

The oracle works on the unpadded batch with explicit loops over (node, graph)
pairs, exactly as the published local_global_loss_ / gan_losses.py describe
it (masked entries zeroed and kept); gradients of the oracle are central
finite differences in float64. Our loss runs on a padded batch (garbage in the
padding rows) in float64 for the tight comparisons.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcl_jax.graph import losses

LOG2 = math.log(2.0)


def softplus(x):
  return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def oracle(l, g, node_graph, *, measure="jsd_hard", beta=0.0, tau=0.5, mask_mode="zero"):
  n, k = l.shape[0], g.shape[0]
  s = [[float(np.dot(l[i], g[j])) for j in range(k)] for i in range(n)]
  own = [[node_graph[i] == j for j in range(k)] for i in range(n)]
  P = [[s[i][j] if own[i][j] else 0.0 for j in range(k)] for i in range(n)]
  Q = [[0.0 if own[i][j] else s[i][j] for j in range(k)] for i in range(n)]
  keep_pos = [[mask_mode == "zero" or own[i][j] for j in range(k)] for i in range(n)]
  keep_neg = [[mask_mode == "zero" or not own[i][j] for j in range(k)] for i in range(n)]

  def ep(p):
    v = LOG2 - softplus(-p)
    if measure == "jsd_hard":
      v -= tau / (1 - tau) * (softplus(-p) + p)
    return v

  e_pos = sum(ep(P[i][j]) for i in range(n) for j in range(k) if keep_pos[i][j]) / n
  if measure == "jsd":
    eq = [[softplus(Q[i][j]) - LOG2 for j in range(k)] for i in range(n)]
  elif beta == 0:
    eq = [[(softplus(Q[i][j]) - LOG2) / (1 - tau) for j in range(k)] for i in range(n)]
  else:
    kept = [Q[i][j] for i in range(n) for j in range(k) if keep_neg[i][j]]
    m = max(max(kept), abs(min(kept)))
    eq = []
    for i in range(n):
      w = [math.exp(beta * (-2 * Q[i][j] / m)) for j in range(k)]
      cols = [j for j in range(k) if keep_neg[i][j]]
      mean = sum(w[j] for j in cols) / len(cols)
      eq.append([w[j] / mean * softplus(Q[i][j]) / (1 - tau) - LOG2 for j in range(k)])
  e_neg = sum(eq[i][j] for i in range(n) for j in range(k) if keep_neg[i][j]) / (n * (k - 1))
  return e_neg - e_pos


def oracle_grads(l, g, node_graph, h=1e-6, **kw):
  grads = []
  for a in (l, g):
    ga = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      old = a[idx]
      a[idx] = old + h
      up = oracle(l, g, node_graph, **kw)
      a[idx] = old - h
      down = oracle(l, g, node_graph, **kw)
      a[idx] = old
      ga[idx] = (up - down) / (2 * h)
    grads.append(ga)
  return grads


def make_case(sizes, dim, pad_nodes, pad_graphs, seed, scale=1.0):
  """Graphs of the given sizes, padded with garbage rows."""
  rng = np.random.default_rng(seed)
  n, k = sum(sizes), len(sizes)
  l = rng.normal(size=(n, dim)) * scale
  g = rng.normal(size=(k, dim)) * scale
  node_graph = np.repeat(np.arange(k), sizes)
  pl = np.concatenate([l, 50 * rng.normal(size=(pad_nodes, dim))])
  pg = np.concatenate([g, 50 * rng.normal(size=(pad_graphs, dim))])
  png = np.concatenate([node_graph, np.full(pad_nodes, k + pad_graphs)])
  node_mask = np.arange(n + pad_nodes) < n
  graph_mask = np.arange(k + pad_graphs) < k
  return l, g, node_graph, (pl, pg, png, node_mask, graph_mask)


def ours(padded, **kw):
  pl, pg, png, nm, gm = padded

  def f(l, g):
    return losses.local_global_loss(l, g, jnp.asarray(png), jnp.asarray(nm), jnp.asarray(gm),
                                    **kw)
  with jax.enable_x64(True):
    value, (gl, gg) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(pl), jnp.asarray(pg))
    return float(value), np.asarray(gl), np.asarray(gg)


CASES = [
    dict(measure="jsd_hard", beta=0.0),
    dict(measure="jsd_hard", beta=1.0),
    dict(measure="jsd_hard", beta=10.0),
    dict(measure="jsd", beta=0.0),
    dict(measure="jsd_hard", beta=2.0, mask_mode="remove"),
    dict(measure="jsd_hard", beta=0.0, mask_mode="remove"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_matches_oracle_values_and_gradients(kw):
  # Graphs of 1, 2 and 9 nodes (very different sizes), padding present.
  l, g, node_graph, padded = make_case([1, 9, 2], dim=4, pad_nodes=5, pad_graphs=2, seed=0)
  oracle_kw = {("tau" if k == "tau_plus" else k): v for k, v in kw.items()}
  want = oracle(l, g, node_graph, **oracle_kw)
  want_gl, want_gg = oracle_grads(l.copy(), g.copy(), node_graph, **oracle_kw)
  value, gl, gg = ours(padded, **kw)
  np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12)
  n, k = l.shape[0], g.shape[0]
  np.testing.assert_allclose(gl[:n], want_gl, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(gg[:k], want_gg, rtol=1e-6, atol=1e-8)
  # Padding rows get exactly zero gradient.
  assert np.all(gl[n:] == 0) and np.all(gg[k:] == 0)


def test_tau_plus_other_than_published():
  l, g, node_graph, padded = make_case([3, 4, 1, 6], dim=3, pad_nodes=2, pad_graphs=1, seed=1)
  for beta in (0.0, 2.0):
    want = oracle(l, g, node_graph, beta=beta, tau=0.1)
    value, _, _ = ours(padded, beta=beta, tau_plus=0.1)
    np.testing.assert_allclose(value, want, rtol=1e-10)


def test_padding_does_not_change_loss():
  """Same graphs, different amounts of (garbage) padding: identical loss and gradients."""
  results = []
  for pad_nodes, pad_graphs, seed in ((0, 0, 3), (40, 9, 3)):
    l, g, node_graph, padded = make_case([5, 2, 11], dim=4, pad_nodes=pad_nodes,
                                         pad_graphs=pad_graphs, seed=seed)
    value, gl, gg = ours(padded, beta=2.0)
    results.append((value, gl[:18], gg[:3]))
  for value, gl, gg in results[1:]:
    np.testing.assert_allclose(value, results[0][0], rtol=1e-12)
    np.testing.assert_allclose(gl, results[0][1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gg, results[0][2], rtol=1e-10, atol=1e-14)


def test_hand_worked_beta0_constant():
  """l = g = 0: s = 0, so Ep = log2 - log2 - log2 = -log2 on every kept entry and
  Eq = 0 (beta = 0): loss = -(-log2 * n * k) / n = k log2 in zero mode, log2 in
  remove mode (one positive pair per node)."""
  l, g = np.zeros((6, 2)), np.zeros((3, 2))
  png = np.array([0, 0, 1, 1, 2, 2])
  padded = (l, g, png, np.ones(6, bool), np.ones(3, bool))
  assert ours(padded, beta=0.0)[0] == pytest.approx(3 * LOG2)
  assert ours(padded, beta=0.0, mask_mode="remove")[0] == pytest.approx(LOG2)


def test_float32_beta10_finite():
  """Large scores and beta = 10 (the published grid's top) stay finite in float32."""
  l, g, node_graph, padded = make_case([30, 3, 60, 7], dim=8, pad_nodes=10, pad_graphs=4,
                                       seed=5, scale=3.0)
  pl, pg, png, nm, gm = padded
  value, grads = jax.value_and_grad(
      lambda a, b: losses.local_global_loss(a, b, png, nm, gm, beta=10.0), argnums=(0, 1))(
          jnp.asarray(pl, jnp.float32), jnp.asarray(pg, jnp.float32))
  want = oracle(l, g, node_graph, beta=10.0)
  np.testing.assert_allclose(float(value), want, rtol=1e-4)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in grads)


@pytest.mark.parametrize("bad, match", [
    (dict(measure="JSD"), "measure='JSD'"),
    (dict(mask_mode="drop"), "mask_mode='drop'"),
    (dict(beta=-1.0), "beta=-1.0"),
    (dict(tau_plus=1.0), "tau_plus=1.0"),
    (dict(measure="jsd", beta=1.0), "jsd_hard"),
])
def test_bad_options(bad, match):
  opts = dict(measure="jsd_hard", beta=0.0, tau_plus=0.5, mask_mode="zero") | bad
  with pytest.raises(ValueError, match=match):
    losses.check_options(**opts)
