"""Contrastive losses: HCL (hard negatives), DCL (debiased) and NT-Xent (SimCLR).

All three are one formula (Robinson et al., "Contrastive Learning with Hard
Negative Samples", ICLR 2021, arXiv:2010.04592, as in its published code):
NT-Xent is HCL with ``beta = 0, tau_plus = 0`` and DCL is HCL with ``beta = 0``.

For the ``2B`` anchors ``z_i`` (the rows of ``concat(z1, z2)``, L2-normalised)
with positive ``z_p(i)`` (the same image's other view) and the ``N = 2B - 2``
other rows as negatives, with ``s_ij = <z_i, z_j> / t``::

    pos_i = exp(s_i,p(i))
    R_i   = N * sum_j exp((beta + 1) s_ij) / sum_j exp(beta s_ij)
    Ng_i  = max((R_i - tau_plus * N * pos_i) / (1 - tau_plus), N * exp(-1/t))
    loss  = mean_i -log(pos_i / (pos_i + Ng_i))

The hardness weights ``exp(beta s_ij)`` are not stop-gradient'ed, as in the
reference code. Everything is evaluated in log space (shifted logsumexps and a
stable ``log(1 - exp(x))``), so float32 stays finite and accurate where the
published exp-space code overflows (t = 0.05, beta = 6 gives NaN there).

How it is computed: the [2B, 2B] similarity matrix is never stored. Anchors go
in blocks of rows (``block_size``); the forward pass keeps four numbers per
anchor, and a hand-written VJP recomputes each block once and forms the whole
gradient of the block's rows with one matmul, using that s is symmetric (see
``_anchor_losses_bwd``). Against autodiff of the same formula that is one
(2B)^2 x D matmul fewer, no (2B)^2 buffers (whose page faults alone cost a
fifth of the time on CPU) and 1.7x faster at B = 4096 on the project's CPU.
Gradients with respect to temperature, tau_plus and beta are exact too.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "hcl_loss",
    "dcl_loss",
    "nt_xent_loss",
    "hcl_loss_and_metrics",
    "l2_normalize",
]

# The similarity matmul is a vanishing fraction of a training step's FLOPs,
# but it is divided by the temperature (x20 at t = 0.05): the default bf16
# passes of TPU matmuls would cost three digits of the loss, so ask for full
# float32 precision.
_SIMILARITY_PRECISION = jax.lax.Precision.HIGHEST
# Anchors per block of the similarity matrix when block_size is None, unless
# the whole [2B, 2B] matrix has at most _ONE_BLOCK_MAX_ENTRIES entries (then
# one block, no loop: faster at small B). On the project's 2-core CPU
# (benchmarks/loss_bench.py --suite blocks) 128..1024 were within 5% of each
# other at B = 4096 (64: 9% slower), within the machine's noise at B = 1024,
# and one block was 1.4-1.6x faster than 256-row blocks at B = 256.
DEFAULT_BLOCK_SIZE = 256
_ONE_BLOCK_MAX_ENTRIES = 1 << 20
# F.normalize's epsilon in the reference code.
_NORMALIZE_EPS = 1e-12


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _check_range(name: str, value: Any, *, low: float, high: float | None,
                 low_inclusive: bool, allowed: str) -> None:
  """Raises ValueError if a concrete hyperparameter is out of range.

  Traced values (under jit / vmap / grad) can't be inspected and are accepted:
  a sweep over a vector of betas inside ``jax.vmap`` must work.
  """
  if _is_traced(value):
    return
  try:
    values = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a real number {allowed}; got {value!r}.") from e
  if values.size == 0 or not np.all(np.isfinite(values)):
    raise ValueError(f"{name} must be a finite number {allowed}; got {value!r}.")
  ok = values >= low if low_inclusive else values > low
  if high is not None:
    ok = ok & (values < high)
  if not np.all(ok):
    raise ValueError(f"{name} must be {allowed}; got {value!r}.")


def _check_hyperparameters(temperature: Any, tau_plus: Any, beta: Any) -> None:
  _check_range("temperature", temperature, low=0.0, high=None,
               low_inclusive=False, allowed="> 0")
  _check_range("tau_plus", tau_plus, low=0.0, high=1.0,
               low_inclusive=True, allowed="in [0, 1)")
  _check_range("beta", beta, low=0.0, high=None,
               low_inclusive=True, allowed=">= 0")


def _check_projections(z1: Any, z2: Any, *, global_batch: bool = False) -> None:
  for name, z in (("z1", z1), ("z2", z2)):
    if not hasattr(z, "shape") or not hasattr(z, "dtype"):
      raise ValueError(f"{name} must be an array of shape [B, D]; got {type(z).__name__}.")
    if len(z.shape) != 2:
      raise ValueError(
          f"{name} must have rank 2 ([B, D]: batch, projection dim); got shape {tuple(z.shape)}.")
    if not jnp.issubdtype(z.dtype, jnp.floating):
      raise ValueError(
          f"{name} must have a floating dtype (float16, bfloat16, float32, float64); got {z.dtype}.")
  if tuple(z1.shape) != tuple(z2.shape):
    raise ValueError(
        f"z1 and z2 must have the same shape [B, D]; got {tuple(z1.shape)} and {tuple(z2.shape)}.")
  if z1.shape[0] < (1 if global_batch else 2):
    raise ValueError(
        f"the batch size B must be >= 2 (each anchor needs at least one negative); got B = {z1.shape[0]}.")
  if z1.shape[1] < 1:
    raise ValueError(f"the projection dimension D must be >= 1; got D = {z1.shape[1]}.")


def _compute_dtype(z: Array) -> Any:
  """float32 for half-precision and float32 inputs; float64 stays float64."""
  return jnp.promote_types(z.dtype, jnp.float32)


def l2_normalize(z: Array) -> Array:
  """Rows of z ([..., D]) over their L2 norm, as torch's F.normalize.

  Computed in float32 (float64 stays float64), whatever the input dtype;
  the one normalisation used by the losses, the models and the evaluation.

  ``z / max(|z|, eps)`` with eps = 1e-12. Its gradient is the exact one of
  that formula, also for rows with ``|z| <= eps`` (a zero row among them):
  there the map is ``z / eps``, so the gradient is ``1 / eps`` times the
  gradient in the normalised row, finite, as PyTorch backpropagates
  F.normalize; a plain ``sqrt`` would give NaN at exactly zero.
  """
  z = z.astype(_compute_dtype(z))
  squared_norm = jnp.sum(z * z, axis=-1, keepdims=True)
  # max(sqrt(x), eps) as sqrt(max(x, eps^2)), with the clamped branch never
  # reaching sqrt's infinite derivative at 0 (the double where).
  small = squared_norm <= _NORMALIZE_EPS * _NORMALIZE_EPS
  norm = jnp.where(small, _NORMALIZE_EPS, jnp.sqrt(jnp.where(small, 1.0, squared_norm)))
  return z / norm


def _log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _check_block_size(block_size: Any) -> None:
  if block_size is None:
    return
  if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
    raise ValueError(
        f"block_size must be None (the default, {DEFAULT_BLOCK_SIZE}) or an integer >= 1; "
        f"got {block_size!r}.")


def _swap_views(x: Array) -> Array:
  """Rows [view 1; view 2] -> [view 2; view 1]: each anchor's positive."""
  half = x.shape[0] // 2
  return jnp.concatenate([x[half:], x[:half]], axis=0)


def _global_batch_size(local_batch: int, axis_name: Any) -> int:
  """B over all devices along axis_name; a ValueError if it isn't a mapped axis."""
  if axis_name is None:
    return local_batch
  try:
    return local_batch * jax.lax.axis_size(axis_name)
  except NameError as e:
    raise ValueError(
        f"axis_name={axis_name!r} is not a mapped axis here: call the loss inside "
        f"jax.shard_map (or jax.pmap) over that mesh axis, or pass axis_name=None "
        f"under plain jit. ({e})") from e


def _gather_rows(x: Array, axis_name: Any) -> Array:
  """This device's per-anchor rows -> all devices' rows, in candidate order.

  Anchors are ordered [local view 1; local view 2], candidates
  [all view-1 rows; all view-2 rows].
  """
  if axis_name is None:
    return x
  half = x.shape[0] // 2
  return jnp.concatenate([jax.lax.all_gather(x[:half], axis_name, tiled=True),
                          jax.lax.all_gather(x[half:], axis_name, tiled=True)], axis=0)


def _anchor_and_positive_ids(num_anchors: int, num_candidates: int, axis_name: Any):
  """Each local anchor's own index and its positive's among the candidates."""
  local_batch, global_batch = num_anchors // 2, num_candidates // 2
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  rows = offset + jnp.arange(local_batch)
  return (jnp.concatenate([rows, global_batch + rows]),
          jnp.concatenate([global_batch + rows, rows]))


def _map_row_blocks(fn, block_size: int, *rows: Array):
  """fn over row blocks of the [A, ...] arrays rows; outputs stacked back to [A, ...].

  Sequential (lax.map), so only one [block_size, 2B] block of the similarity
  matrix lives at a time. A that block_size doesn't divide is padded by
  repeating the last row (finite values), and the padded outputs are dropped.
  """
  num_rows = rows[0].shape[0]
  if num_rows <= block_size:
    return fn(*rows)
  num_blocks = -(-num_rows // block_size)
  pad = num_blocks * block_size - num_rows
  blocks = tuple(
      jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1), mode="edge").reshape(
          (num_blocks, block_size) + r.shape[1:]) for r in rows)
  out = jax.lax.map(lambda b: fn(*b), blocks)
  return jax.tree.map(lambda o: o.reshape((num_blocks * block_size,) + o.shape[2:])[:num_rows], out)


def _negatives(shape, anchor_ids: Array, positive_ids: Array) -> Array:
  """[A, M] mask of each anchor's negatives: every candidate but itself and its positive."""
  columns = jax.lax.broadcasted_iota(anchor_ids.dtype, shape, 1)
  return (columns != anchor_ids[:, None]) & (columns != positive_ids[:, None])


def _block_sums(scaled: Array, candidates: Array, anchor_ids: Array, positive_ids: Array,
                beta: Array, beta_is_zero: bool):
  """Per-anchor log-space sums over the negatives, for one block of anchors.

  Returns (s_max, P, Q): the largest negative s_ij, P = sum_j e^{(beta+1) x_ij}
  and Q = sum_j e^{beta x_ij} with x_ij = s_ij - s_max <= 0, so that both sums
  lie in [1, N] (no overflow, no underflow) and R = N e^{s_max} P / Q.
  """
  s = jnp.matmul(scaled, candidates.T, precision=_SIMILARITY_PRECISION)
  negative = _negatives(s.shape, anchor_ids, positive_ids)
  s_max = jnp.max(jnp.where(negative, s, -jnp.inf), axis=1)
  # The double where: masked entries (the anchor's own s = 1/t among them)
  # never reach exp, so neither they nor their gradients can overflow.
  x = jnp.where(negative, s - s_max[:, None], 0.0)
  e = jnp.where(negative, jnp.exp(x), 0.0)
  if beta_is_zero:
    return s_max, jnp.sum(e, axis=1), None
  w = jnp.where(negative, jnp.exp(beta * x), 0.0)
  return s_max, jnp.sum(w * e, axis=1), jnp.sum(w, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _anchor_losses(z, temperature, tau_plus, beta, axis_name, block_size, beta_is_zero):
  """Per-anchor HCL terms of this device's anchors, with an analytic VJP.

  Args:
    z: [A, D] this device's anchors [view 1; view 2], L2-normalised, float32
      (or float64). Candidates are all devices' rows (all-gathered).
    temperature, tau_plus, beta: scalars (possibly traced).

  Returns:
    (loss [A], clamped [A] as 0/1 floats). The clamp indicator has no gradient.
  """
  return _anchor_losses_fwd(z, temperature, tau_plus, beta, axis_name, block_size,
                            beta_is_zero)[0]


def _anchor_losses_fwd(z, temperature, tau_plus, beta, axis_name, block_size, beta_is_zero):
  candidates = _gather_rows(z, axis_name)
  num_negatives = candidates.shape[0] - 2
  log_n = math.log(num_negatives)
  anchor_ids, positive_ids = _anchor_and_positive_ids(z.shape[0], candidates.shape[0], axis_name)
  inv_t = 1.0 / temperature
  # 1/t folded into the [A, D] side: one pass fewer over the [A, M] matrix.
  scaled = z * inv_t
  s_pos = jnp.sum(scaled * _swap_views(z), axis=1)
  s_max, p, q = _map_row_blocks(
      lambda a, i, j: _block_sums(a, candidates, i, j, beta, beta_is_zero),
      block_size, scaled, anchor_ids, positive_ids)
  log_p = jnp.log(p)
  if beta_is_zero:  # every weight is 1: Q = N
    q, log_q = jnp.full_like(p, num_negatives), jnp.full_like(p, log_n)
  else:
    log_q = jnp.log(q)

  # log R = log N + s_max + log P - log Q. log(R - tau+ N pos) = log R +
  # log(1 - e^x) with x = log(tau+) + x0, x0 = log(N pos / R), formed from
  # differences of similar-sized terms (s_pos - s_max). When x >= 0 the
  # debiased estimate is <= 0 and the clamp binds.
  x0 = (s_pos - s_max) - (log_p - log_q)
  x = jnp.log(tau_plus) + x0
  valid = x < 0.0
  log_debiased = (log_n + s_max + log_p - log_q + _log1mexp(jnp.where(valid, x, -1.0))
                  - jnp.log1p(-tau_plus))
  log_clamp = log_n - inv_t
  clamped = jnp.logical_not(valid & (log_debiased > log_clamp))
  log_ng = jnp.where(clamped, log_clamp, log_debiased)
  # -log(pos / (pos + Ng)) = log(exp(s_pos) + Ng) - s_pos = softplus(log Ng - s_pos).
  loss = jax.nn.softplus(log_ng - s_pos)
  residuals = (z, candidates, temperature, tau_plus, beta, s_max, p, q, s_pos, x0, x, clamped,
               log_ng)
  return (loss, clamped.astype(z.dtype)), residuals


def _anchor_losses_bwd(axis_name, block_size, beta_is_zero, residuals, cotangents):
  """The analytic VJP, one [block, M] pass after recomputing s.

  With G_ij = d loss / d s_ij (non-zero on negatives of unclamped anchors),
  G_ij = a_i e^{(beta+1) x_ij} - b_i e^{beta x_ij}. As s is symmetric, the
  gradient of row k is (1/t) sum_j (G_kj + G_jk) z_j: G_jk is formed from
  s_kj and row j's scalars (all-gathered), so one [block, M] x [M, D] matmul
  gives each device the whole gradient of its own rows, where autodiff needs
  two (G z and G^T z) and a reduce-scatter.
  """
  g, _ = cotangents  # the clamp indicator has no gradient
  z, candidates, temperature, tau_plus, beta, s_max, p, q, s_pos, x0, x, clamped, log_ng = residuals
  anchor_ids, positive_ids = _anchor_and_positive_ids(z.shape[0], candidates.shape[0], axis_name)
  inv_t = 1.0 / temperature
  scaled = z * inv_t

  # d loss_i / d log Ng_i and the chain through log Ng = log R + log(1 - e^x) - log(1 - tau+):
  # d/d log R = kappa = 1 / (1 - e^x), d/d s_pos = 1 - kappa; 0 where clamped.
  sig = g * jax.nn.sigmoid(log_ng - s_pos)
  kappa = jnp.where(clamped, 0.0, 1.0 / -jnp.expm1(jnp.where(clamped, -1.0, x)))
  u = sig * kappa / p  # d loss / d log P, per unit of (beta + 1)
  v = sig * kappa / q  # -d loss / d log Q, per unit of beta
  a = (beta + 1.0) * u
  b = beta * v
  g_pos = -sig * jnp.where(clamped, 1.0, kappa)
  s_max_all, a_all, b_all = (_gather_rows(r, axis_name) for r in (s_max, a, b))

  def block(scaled_i, ids_i, pos_i, s_max_i, a_i, b_i, u_i, v_i):
    s = jnp.matmul(scaled_i, candidates.T, precision=_SIMILARITY_PRECISION)
    negative = _negatives(s.shape, ids_i, pos_i)
    x_i = jnp.where(negative, s - s_max_i[:, None], 0.0)  # row i's shift
    x_j = jnp.where(negative, s - s_max_all[None, :], 0.0)  # row j's (s_ji = s_ij)
    e_i, e_j = jnp.exp(x_i), jnp.exp(x_j)
    # The hardness weights e^{beta x}; at a concrete beta = 0 they are 1 (and b = 0).
    w_i, w_j = (1.0, 1.0) if beta_is_zero else (jnp.exp(beta * x_i), jnp.exp(beta * x_j))
    h = w_i * (a_i[:, None] * e_i - b_i[:, None]) + w_j * (a_all[None, :] * e_j - b_all[None, :])
    h = jnp.where(negative, h, 0.0)
    # d loss / d beta through log P - log Q (only computed if asked for).
    d_beta = jnp.sum(jnp.where(negative, x_i * w_i * (u_i[:, None] * e_i - v_i[:, None]), 0.0),
                     axis=1)
    return jnp.matmul(h, candidates, precision=_SIMILARITY_PRECISION), d_beta

  hz, d_beta = _map_row_blocks(block, block_size, scaled, anchor_ids, positive_ids, s_max,
                               a, b, u, v)
  g_pos_pairs = g_pos + _swap_views(g_pos)
  dz = (hz + g_pos_pairs[:, None] * _swap_views(z)) * inv_t

  # Hyperparameter cotangents (dead code unless someone differentiates them).
  # t: s = <z_i, z_j> / t, so d/dt = -(1/t) (sum_ij G_ij s_ij + sum_i g_pos_i s_pos_i),
  # with sum_ij G s = 1/2 sum_k <scaled_k, hz_k> (each G entry appears in two
  # rows of h); plus the clamp log N - 1/t.
  d_t = (-(0.5 * jnp.sum(scaled * hz) + jnp.sum(g_pos * s_pos)) * inv_t
         + jnp.sum(jnp.where(clamped, sig, 0.0)) * inv_t * inv_t)
  # tau+: d log Ng / d tau+ = -kappa e^{x0} + 1 / (1 - tau+); the first term is
  # formed as one exp of a sum, which stays finite where e^{x0} alone would not.
  d_tau = jnp.sum(jnp.where(
      clamped, 0.0,
      -g * kappa * jnp.exp(x0 + jax.nn.log_sigmoid(log_ng - s_pos)) + sig / (1.0 - tau_plus)))
  d_beta = jnp.sum(d_beta)
  if axis_name is not None:
    d_t, d_tau, d_beta = (jax.lax.psum(c, axis_name) for c in (d_t, d_tau, d_beta))
  return dz, d_t, d_tau, d_beta


_anchor_losses.defvjp(_anchor_losses_fwd, _anchor_losses_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _psum_sum_of_local_terms(x: Array, axis_name: Any) -> Array:
  """psum of per-device partial sums, differentiated as the global sum.

  Every device holds the same global loss and differentiates it; d(global)/
  d(local partial sum) is 1 on each device. That is the transpose shard_map
  gives psum, but pmap transposes psum to another psum (a gradient scaled by
  the device count), so the rule is stated here for both.
  """
  return jax.lax.psum(x, axis_name)


def _psum_fwd(x, axis_name):
  return jax.lax.psum(x, axis_name), None


def _psum_bwd(axis_name, _, cotangent):
  # The cotangent of a replicated value, handed back to a per-device one.
  return (jax.lax.pcast(cotangent, axis_name, to="varying"),)


_psum_sum_of_local_terms.defvjp(_psum_fwd, _psum_bwd)


def _explicit_batch_axes(z: Array) -> tuple[str, ...]:
  """The Explicit mesh axes that z's batch (first) dimension is sharded over.

  Empty for unsharded arrays and for Auto axes (where the type carries no
  sharding and plain jit lets XLA insert the collectives).
  """
  sharding = getattr(jax.typeof(z), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if not spec or spec[0] is None:
    return ()
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
  return tuple(a for a in axes if types.get(a) == jax.sharding.AxisType.Explicit)


def _shard_mapped_over_batch(z1, z2, batch_axes, *, temperature, tau_plus, beta, block_size):
  """The loss of rows sharded over Explicit axes: the axis_name path, per shard.

  On an Explicit mesh a [2B@data, D] x [D, 2B@data] similarity matmul has no
  legal sharding, and that is what the global formula asks for. So each
  device takes its own rows as anchors and all-gathers the candidates, as
  under ``jax.shard_map(..., axis_name=...)``: the same value and gradients as
  unsharded inputs, memory O(block_size x 2B) per device. Hyperparameters that
  are arrays (traced, learned, vmapped) are passed in replicated; Python
  numbers stay static (beta = 0 still skips the hardness weights).
  """
  mesh = jax.typeof(z1).sharding.mesh
  spec = jax.sharding.PartitionSpec(batch_axes if len(batch_axes) > 1 else batch_axes[0])
  # The feature dimension whole on each device, and z2 laid out like z1.
  z1, z2 = (z if getattr(jax.typeof(z).sharding, "spec", None) == spec
            else jax.sharding.reshard(z, jax.sharding.NamedSharding(mesh, spec))
            for z in (z1, z2))
  hypers = {"temperature": temperature, "tau_plus": tau_plus, "beta": beta}
  traced = {k: v for k, v in hypers.items() if isinstance(v, jax.Array)}
  static = {k: v for k, v in hypers.items() if k not in traced}
  axis_name = batch_axes if len(batch_axes) > 1 else batch_axes[0]

  def per_shard(a, b, arrays):
    return hcl_loss_and_metrics(a, b, axis_name=axis_name, block_size=block_size, **static,
                                **arrays)

  replicated = jax.sharding.PartitionSpec()
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, replicated),
                       out_specs=replicated)(z1, z2, traced)


def hcl_loss_and_metrics(
    z1: Array,
    z2: Array,
    *,
    temperature: float | Array = 0.5,
    tau_plus: float | Array = 0.1,
    beta: float | Array = 1.0,
    axis_name: Any = None,
    block_size: int | None = None,
) -> tuple[Array, Mapping[str, Array]]:
  """HCL loss with the training metrics that come for free with it.

  Same arguments and loss as :func:`hcl_loss`.

  Returns:
    ``(loss, metrics)``: the float32 scalar loss and a dict of float32 scalars,
    ``clamped_fraction`` (fraction of anchors whose ``Ng_i`` hit the clamp
    ``N exp(-1/t)``), ``positive_similarity`` (mean cosine to the positive) and
    ``negative_similarity`` (mean cosine to the negatives); all over the
    global batch when ``axis_name`` is given. The metrics carry no gradient.
  """
  _check_projections(z1, z2, global_batch=axis_name is not None)
  _check_hyperparameters(temperature, tau_plus, beta)
  _check_block_size(block_size)
  if axis_name is None:
    batch_axes = _explicit_batch_axes(z1)
    if batch_axes:
      return _shard_mapped_over_batch(z1, z2, batch_axes, temperature=temperature,
                                      tau_plus=tau_plus, beta=beta, block_size=block_size)
  dtype = _compute_dtype(z1)
  beta_is_zero = not _is_traced(beta) and not np.any(np.asarray(beta))
  temperature = jnp.asarray(temperature, dtype)
  tau_plus = jnp.asarray(tau_plus, dtype)
  beta = jnp.asarray(beta, dtype)

  local_batch = z1.shape[0]
  global_batch = _global_batch_size(local_batch, axis_name)
  if global_batch < 2:
    raise ValueError(
        f"the global batch size B must be >= 2 (each anchor needs at least one negative); "
        f"got B = {global_batch}.")
  # This device's anchors: its view-1 rows then its view-2 rows.
  z = jnp.concatenate([l2_normalize(z1), l2_normalize(z2)], axis=0)
  if block_size is None:
    one_block = z.shape[0] * 2 * global_batch <= _ONE_BLOCK_MAX_ENTRIES
    block_size = z.shape[0] if one_block else DEFAULT_BLOCK_SIZE
  loss, clamped = _anchor_losses(z, temperature, tau_plus, beta, axis_name, block_size,
                                 beta_is_zero)

  def global_sum(x):
    total = jnp.sum(x.astype(dtype))
    if axis_name is not None:
      total = _psum_sum_of_local_terms(total, axis_name)
    return total

  # Metrics: O(B D), from the normalised rows. The negatives' cosines sum to
  # <z_i, sum of all rows> minus the anchor's own and its positive's.
  zs = jax.lax.stop_gradient(z)
  positive_cosine = jnp.sum(zs * _swap_views(zs), axis=1)
  column_sum = jnp.sum(zs, axis=0)
  if axis_name is not None:
    column_sum = jax.lax.psum(column_sum, axis_name)
  negative_cosine = (zs @ column_sum - jnp.sum(zs * zs, axis=1) - positive_cosine) / (
      2 * global_batch - 2)
  num_anchors = 2 * global_batch
  metrics = {
      # No gradient: the clamp indicator's VJP is zero, the cosines use zs.
      "clamped_fraction": global_sum(clamped) / num_anchors,
      "positive_similarity": global_sum(positive_cosine) / num_anchors,
      "negative_similarity": global_sum(negative_cosine) / num_anchors,
  }
  return global_sum(loss) / num_anchors, metrics


def hcl_loss(
    z1: Array,
    z2: Array,
    *,
    temperature: float | Array = 0.5,
    tau_plus: float | Array = 0.1,
    beta: float | Array = 1.0,
    axis_name: Any = None,
    block_size: int | None = None,
) -> Array:
  r"""Hard negative contrastive loss (HCL) of Robinson et al., ICLR 2021.

  With :math:`z_i` the :math:`2B` rows of ``concat(z1, z2)`` L2-normalised,
  :math:`p(i)` the other view of the same image, :math:`N = 2B - 2` negatives
  per anchor and :math:`s_{ij} = z_i^\top z_j / t`:

  .. math::

    R_i = N \frac{\sum_{j \ne i, p(i)} e^{(\beta + 1) s_{ij}}}
                 {\sum_{j \ne i, p(i)} e^{\beta s_{ij}}}, \qquad
    Ng_i = \max\Big(\frac{R_i - \tau^+ N e^{s_{i p(i)}}}{1 - \tau^+},\;
                     N e^{-1/t}\Big),

  .. math::

    \mathcal{L} = \frac{1}{2B} \sum_{i=1}^{2B}
        -\log \frac{e^{s_{i p(i)}}}{e^{s_{i p(i)}} + Ng_i}.

  Gradients flow through the hardness weights :math:`e^{\beta s_{ij}}` (as in
  the published code); where the clamp is active :math:`Ng_i` has zero
  gradient in z (the clamp :math:`N e^{-1/t}` still depends on t). Evaluated in
  log space, so it is finite in float32 at any temperature and beta; its value
  is within 1e-5 (relative) of a float64 evaluation, and so is its gradient
  wherever the formula is well conditioned. Near the clamp at low t the
  gradient itself is ill-conditioned (anchors where :math:`R_i - \tau^+ N
  e^{s_{ip(i)}}` nearly cancels): there the float32 error of forming
  :math:`s_{ij}` alone moves it by up to ~1e-4.

  Args:
    z1: [B, D] projections of the first view of B images, any float dtype;
      need not be normalised. B >= 2.
    z2: [B, D] projections of the second view of the same images, row i of z2
      being the same image as row i of z1.
    temperature: t > 0, scalar (a Python float, or a traced array e.g. under
      ``jax.vmap``, or a learned parameter: the loss is differentiable in it).
    tau_plus: class prior :math:`\tau^+` in [0, 1), scalar.
    beta: concentration :math:`\beta \ge 0` of the hard-negative weights,
      scalar. It multiplies :math:`s_{ij}`, which is already divided by t.
    axis_name: None, or the mesh axis (name or tuple of names) over which the
      batch is split, when called inside ``jax.shard_map`` / ``jax.pmap``.
      Then z1, z2 are this device's [B_local, D] rows; the loss uses all
      2 B_global rows as candidates (all-gather), averages over all 2 B_global
      anchors and returns the same value on every device; each device computes
      only its own anchors' rows (memory O(block_size x B_global)) and its input
      gradient is exactly its slice of the single-device gradient. Under plain
      ``jax.jit`` with globally sharded z1, z2 leave it None: on Auto axes XLA
      places the collectives; on Explicit axes (``jax.make_mesh``'s default)
      the loss takes this per-shard path itself.
    block_size: anchors per block of the similarity matrix: memory is
      O(block_size x 2B), never O((2B)^2). None (the default) takes
      ``DEFAULT_BLOCK_SIZE`` = 256, or one block when the whole matrix has
      at most 2^20 entries. Any block_size gives the same result (a last
      partial block is padded and dropped); it only trades memory for speed.

  Returns:
    A float32 scalar (float64 for float64 inputs): the mean loss over the 2B
    anchors.

  Raises:
    ValueError: for a concrete hyperparameter out of range, ranks other than
      2, mismatched shapes, B < 2 or a non-float dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from hcl_jax import losses
    >>> z1, z2 = jax.random.normal(jax.random.key(0), (2, 8, 16))
    >>> loss = losses.hcl_loss(z1, z2, temperature=0.5, tau_plus=0.1, beta=1.0)
    >>> sweep = jax.vmap(lambda b: losses.hcl_loss(z1, z2, beta=b))(jnp.arange(4.0))

  References:
    Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard Negative
    Samples", ICLR 2021. https://arxiv.org/abs/2010.04592
  """
  return hcl_loss_and_metrics(z1, z2, temperature=temperature, tau_plus=tau_plus, beta=beta,
                              axis_name=axis_name, block_size=block_size)[0]


def dcl_loss(
    z1: Array,
    z2: Array,
    *,
    temperature: float | Array = 0.5,
    tau_plus: float | Array = 0.1,
    axis_name: Any = None,
    block_size: int | None = None,
) -> Array:
  r"""Debiased contrastive loss (DCL) of Chuang et al., NeurIPS 2020.

  :func:`hcl_loss` with ``beta = 0``: uniform weights over the negatives, so

  .. math::

    Ng_i = \max\Big(\frac{\sum_{j \ne i, p(i)} e^{s_{ij}} - \tau^+ N e^{s_{i p(i)}}}
                         {1 - \tau^+},\; N e^{-1/t}\Big).

  Args:
    z1: [B, D] projections of the first view, any float dtype. B >= 2.
    z2: [B, D] projections of the second view of the same images.
    temperature: t > 0, scalar.
    tau_plus: class prior in [0, 1), scalar.

  Returns:
    A float32 scalar: the mean loss over the 2B anchors.

  References:
    Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased Contrastive Learning",
    NeurIPS 2020. https://arxiv.org/abs/2007.00224
  """
  return hcl_loss(z1, z2, temperature=temperature, tau_plus=tau_plus, beta=0.0,
                  axis_name=axis_name, block_size=block_size)


def nt_xent_loss(
    z1: Array,
    z2: Array,
    *,
    temperature: float | Array = 0.5,
    axis_name: Any = None,
    block_size: int | None = None,
) -> Array:
  r"""NT-Xent, the SimCLR loss (Chen et al., ICML 2020).

  :func:`hcl_loss` with ``beta = 0, tau_plus = 0`` (the clamp can't bind):

  .. math::

    \mathcal{L} = \frac{1}{2B} \sum_i -\log
        \frac{e^{s_{i p(i)}}}{e^{s_{i p(i)}} + \sum_{j \ne i, p(i)} e^{s_{ij}}}.

  Args:
    z1: [B, D] projections of the first view, any float dtype. B >= 2.
    z2: [B, D] projections of the second view of the same images.
    temperature: t > 0, scalar.

  Returns:
    A float32 scalar: the mean loss over the 2B anchors.

  References:
    Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML 2020. https://arxiv.org/abs/2002.05709
  """
  return hcl_loss(z1, z2, temperature=temperature, tau_plus=0.0, beta=0.0,
                  axis_name=axis_name, block_size=block_size)
