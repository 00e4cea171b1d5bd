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
  """
  z = z.astype(_compute_dtype(z))
  norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
  return z / jnp.maximum(norm, _NORMALIZE_EPS)


def _log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _anchor_terms(anchors: Array, candidates: Array, anchor_ids: Array,
                  positive_ids: Array, *, temperature: Any, tau_plus: Any,
                  beta: Any, beta_is_zero: bool = False) -> tuple[Array, Array, Array, Array]:
  """Per-anchor loss terms for a set of anchors against all candidates.

  Args:
    anchors: [A, D] L2-normalised float32 anchor rows.
    candidates: [M, D] L2-normalised float32 rows: every row of the (global)
      batch, anchors included.
    anchor_ids: [A] int, index of each anchor among the candidates (excluded
      from its own negatives).
    positive_ids: [A] int, index of each anchor's positive among the candidates.
    beta_is_zero: beta is a concrete 0 (DCL, NT-Xent): skip the weights' sum.

  Returns:
    (loss [A], clamped [A] bool, positive cosine [A], mean negative cosine [A]).
  """
  inv_t = 1.0 / temperature
  num_candidates = candidates.shape[0]
  num_negatives = num_candidates - 2
  log_n = math.log(num_negatives)

  # 1/t folded into the [A, D] side: one pass fewer over the [A, M] matrix.
  scaled = anchors * inv_t
  s = jnp.matmul(scaled, candidates.T, precision=_SIMILARITY_PRECISION)
  s_pos = jnp.sum(scaled * candidates[positive_ids], axis=1)
  columns = jnp.arange(num_candidates)[None, :]
  negative = (columns != anchor_ids[:, None]) & (columns != positive_ids[:, None])

  # log R_i = log N + log sum_j e^{(beta+1) s_ij} - log sum_j e^{beta s_ij} over
  # the negatives. Both sums are shifted by the row's largest negative s_max:
  # every exponent is then <= 0 (no overflow, and each sum >= 1: no
  # underflow), and the shifts (beta + 1) s_max and beta s_max cancel to
  # s_max, so no large offset (up to (beta + 1) / t) enters in float32. The
  # shift's gradient cancels as well, hence stop_gradient. Masked entries are
  # set to 0 before exp (a double where), so that neither their values (the
  # anchor's own s = 1/t) nor their gradients can overflow.
  s_max = jax.lax.stop_gradient(
      jnp.max(jnp.where(negative, s, -jnp.inf), axis=1, keepdims=True))
  shifted = jnp.where(negative, s - s_max, 0.0)
  if beta_is_zero:
    log_sum_weighted = jnp.log(jnp.sum(jnp.where(negative, jnp.exp(shifted), 0.0), axis=1))
    log_sum_weights = log_n
  else:
    weights = jnp.where(negative, jnp.exp(beta * shifted), 0.0)
    log_sum_weighted = jnp.log(jnp.sum(weights * jnp.exp(shifted), axis=1))
    log_sum_weights = jnp.log(jnp.sum(weights, axis=1))
  s_max = s_max[:, 0]
  log_r = log_n + s_max + log_sum_weighted - log_sum_weights

  # log(R - tau+ N pos) = log R + log(1 - exp(x)), x = log(tau+ N pos) - log R,
  # with x formed from differences of similar-sized terms (s_pos - s_max).
  # When x >= 0 the debiased estimate is <= 0 and the clamp binds.
  x = jnp.log(tau_plus) + (s_pos - s_max) - (log_sum_weighted - log_sum_weights)
  valid = x < 0.0
  log_debiased = log_r + _log1mexp(jnp.where(valid, x, -1.0)) - jnp.log1p(-tau_plus)
  log_clamp = log_n - inv_t
  clamped = jnp.logical_not(valid & (log_debiased > log_clamp))
  log_ng = jnp.where(clamped, log_clamp, log_debiased)

  # -log(pos / (pos + Ng)) = log(exp(s_pos) + Ng) - s_pos = softplus(log Ng - s_pos).
  loss = jax.nn.softplus(log_ng - s_pos)

  positive_cosine = s_pos * temperature
  negative_cosine = jnp.sum(jnp.where(negative, s, 0.0), axis=1) * temperature / num_negatives
  return loss, clamped, positive_cosine, negative_cosine


def _check_block_size(block_size: Any) -> None:
  if block_size is None:
    return
  if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
    raise ValueError(f"block_size must be None (untiled) or an integer >= 1; got {block_size!r}.")


def _gather_candidates(z1: Array, z2: Array, axis_name: Any) -> tuple[Array, int, Array]:
  """All rows of the global batch as candidates, and this shard's row offset.

  Returns (candidates [2 B_global, D] ordered [all view-1 rows; all view-2
  rows], B_global, offset of this device's rows within each view).
  """
  if axis_name is None:
    return jnp.concatenate([z1, z2], axis=0), z1.shape[0], jnp.asarray(0)
  try:
    # all_gather's transpose is a reduce-scatter: every device's anchors send
    # their gradient back to the rows' owners, unscaled. That is the exact
    # single-device gradient, where dropping it or dividing by world size is
    # the classic multi-device contrastive bug.
    g1 = jax.lax.all_gather(z1, axis_name, tiled=True)
    g2 = jax.lax.all_gather(z2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * z1.shape[0]
  except NameError as e:
    raise ValueError(
        f"axis_name={axis_name!r} is not a mapped axis here: call the loss inside "
        f"jax.shard_map (or jax.pmap) over that mesh axis, or pass axis_name=None "
        f"under plain jit. ({e})") from e
  return jnp.concatenate([g1, g2], axis=0), g1.shape[0], offset


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


def _tiled_anchor_terms(anchors, candidates, anchor_ids, positive_ids, *, block_size, **kw):
  """_anchor_terms over row blocks of anchors, rematerialised in the backward.

  Forward and backward hold one [block_size, M] block at a time (plus the
  [M, D] candidates and their gradient), never the [A, M] matrix. A that
  block_size does not divide is padded with rows whose terms are dropped.
  """
  num_anchors, dim = anchors.shape
  num_blocks = -(-num_anchors // block_size)
  pad = num_blocks * block_size - num_anchors
  anchors = jnp.pad(anchors, ((0, pad), (0, 0)))
  # Padded rows point at candidates 0 / 1: finite values, sliced off below.
  anchor_ids = jnp.pad(anchor_ids, (0, pad))
  positive_ids = jnp.pad(positive_ids, (0, pad), constant_values=1)

  @jax.checkpoint
  def block(args):
    return _anchor_terms(*args[:1], candidates, *args[1:], **kw)

  terms = jax.lax.map(block, (anchors.reshape(num_blocks, block_size, dim),
                              anchor_ids.reshape(num_blocks, block_size),
                              positive_ids.reshape(num_blocks, block_size)))
  return tuple(t.reshape(-1)[:num_anchors] for t in terms)


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
    global batch when ``axis_name`` is given.
  """
  _check_projections(z1, z2, global_batch=axis_name is not None)
  _check_hyperparameters(temperature, tau_plus, beta)
  _check_block_size(block_size)
  dtype = _compute_dtype(z1)
  beta_is_zero = not _is_traced(beta) and not np.any(np.asarray(beta))
  temperature = jnp.asarray(temperature, dtype)
  tau_plus = jnp.asarray(tau_plus, dtype)
  beta = jnp.asarray(beta, dtype)

  local_batch = z1.shape[0]
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
  candidates, global_batch, offset = _gather_candidates(z1, z2, axis_name)
  if global_batch < 2:
    raise ValueError(
        f"the global batch size B must be >= 2 (each anchor needs at least one negative); "
        f"got B = {global_batch}.")
  # This device's anchors: its view-1 rows then its view-2 rows, each paired
  # with the same image's other view in the global candidate order.
  rows = offset + jnp.arange(local_batch)
  anchors = jnp.concatenate([z1, z2], axis=0)
  anchor_ids = jnp.concatenate([rows, global_batch + rows])
  positive_ids = jnp.concatenate([global_batch + rows, rows])
  kw = dict(temperature=temperature, tau_plus=tau_plus, beta=beta, beta_is_zero=beta_is_zero)
  if block_size is None or block_size >= anchors.shape[0]:
    terms = _anchor_terms(anchors, candidates, anchor_ids, positive_ids, **kw)
  else:
    terms = _tiled_anchor_terms(anchors, candidates, anchor_ids, positive_ids,
                                block_size=block_size, **kw)
  loss, clamped, pos_cos, neg_cos = terms

  def global_mean(x):
    total = jnp.sum(x.astype(dtype))
    if axis_name is not None:
      total = _psum_sum_of_local_terms(total, axis_name)
    return total / (2 * global_batch)

  metrics = {
      "clamped_fraction": global_mean(clamped),
      "positive_similarity": global_mean(pos_cos),
      "negative_similarity": global_mean(neg_cos),
  }
  return global_mean(loss), metrics


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
  gradient. Evaluated in log space, so it is finite in float32 at any
  temperature and beta; its value is within 1e-5 (relative) of a float64
  evaluation, and so is its gradient wherever the formula is well conditioned
  (near the clamp at low t the gradient itself is ill-conditioned, and float32
  rounding of s alone moves it by up to ~1e-4).

  Args:
    z1: [B, D] projections of the first view of B images, any float dtype;
      need not be normalised. B >= 2.
    z2: [B, D] projections of the second view of the same images, row i of z2
      being the same image as row i of z1.
    temperature: t > 0, scalar (a Python float, or a traced array e.g. under
      ``jax.vmap``).
    tau_plus: class prior :math:`\tau^+` in [0, 1), scalar.
    beta: concentration :math:`\beta \ge 0` of the hard-negative weights,
      scalar. It multiplies :math:`s_{ij}`, which is already divided by t.
    axis_name: None, or the mesh axis (name or tuple of names) over which the
      batch is split, when called inside ``jax.shard_map`` / ``jax.pmap``.
      Then z1, z2 are this device's [B_local, D] rows; the loss uses all
      2 B_global rows as candidates (all-gather), averages over all 2 B_global
      anchors and returns the same value on every device; each device computes
      only its own anchors' rows (memory O(B_local x B_global)) and its input
      gradient is exactly its slice of the single-device gradient. Under plain
      ``jax.jit`` with globally sharded z1, z2 leave it None.
    block_size: None, or the number of anchors per row block: the loss is then
      computed block by block against all candidates and rematerialised in the
      backward pass, so memory is O(block_size x 2B) instead of O((2B)^2).
      Any block_size is exact (a last partial block is padded and dropped).

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
