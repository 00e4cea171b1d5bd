"""Contrastive losses: HCL (hard negatives), DCL (debiased) and NT-Xent (SimCLR).

All three are one formula, Robinson et al., "Contrastive Learning with Hard
Negative Samples", ICLR 2021 (arXiv:2010.04592), as in its published code,
stated in :func:`hcl_loss`'s docstring: DCL is HCL with ``beta = 0`` and
NT-Xent is HCL with ``beta = 0, tau_plus = 0``. As optax's losses they are
pure functions of the arrays, ``z1, z2`` [B, D] (two views of B images) ->
a scalar, with keyword-only hyperparameters that may be traced (jit, vmap,
grad).

The formula is evaluated in log space, in blocks of anchors, with a
hand-written VJP, in :mod:`hcl_jax.losses._blocked`. Here, in order: the public
API, the argument checks, and the path for inputs sharded over Explicit mesh
axes.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hcl_jax.losses._blocked import (Hyperparameters, Layout, anchor_losses, psum_of_local_terms,
                                   swap_views)

Array = jax.Array

__all__ = [
    "hcl_loss",
    "dcl_loss",
    "nt_xent_loss",
    "hcl_loss_and_metrics",
    "l2_normalize",
]

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


def hcl_loss(z1: Array, z2: Array, *, temperature: float | Array = 0.5,
             tau_plus: float | Array = 0.1, beta: float | Array = 1.0, axis_name: Any = None,
             block_size: int | None = None) -> Array:
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


def hcl_loss_and_metrics(
    z1: Array, z2: Array, *, temperature: float | Array = 0.5, tau_plus: float | Array = 0.1,
    beta: float | Array = 1.0, axis_name: Any = None, block_size: int | None = None,
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
  hypers = Hyperparameters(*(jnp.asarray(h, dtype) for h in (temperature, tau_plus, beta)))
  global_batch = _global_batch_size(z1.shape[0], axis_name)
  if global_batch < 2:
    raise ValueError(
        f"the global batch size B must be >= 2 (each anchor needs at least one negative); "
        f"got B = {global_batch}.")
  # This device's anchors: its view-1 rows then its view-2 rows.
  z = jnp.concatenate([l2_normalize(z1), l2_normalize(z2)], axis=0)
  if block_size is None:
    one_block = z.shape[0] * 2 * global_batch <= _ONE_BLOCK_MAX_ENTRIES
    block_size = z.shape[0] if one_block else DEFAULT_BLOCK_SIZE
  loss, clamped = anchor_losses(Layout(axis_name, block_size, beta_is_zero), z, hypers)

  num_anchors = 2 * global_batch

  def global_mean(x):
    total = jnp.sum(x.astype(dtype))
    if axis_name is not None:
      total = psum_of_local_terms(total, axis_name)
    return total / num_anchors

  # Metrics: O(B D), from the normalised rows. The negatives' cosines sum to
  # <z_i, sum of all rows> minus the anchor's own and its positive's.
  zs = jax.lax.stop_gradient(z)
  positive_cosine = jnp.sum(zs * swap_views(zs), axis=1)
  column_sum = jnp.sum(zs, axis=0)
  if axis_name is not None:
    column_sum = jax.lax.psum(column_sum, axis_name)
  negative_cosine = (zs @ column_sum - jnp.sum(zs * zs, axis=1) - positive_cosine) / (
      num_anchors - 2)
  metrics = {
      # No gradient: the clamp indicator's VJP is zero, the cosines use zs.
      "clamped_fraction": global_mean(clamped),
      "positive_similarity": global_mean(positive_cosine),
      "negative_similarity": global_mean(negative_cosine),
  }
  return global_mean(loss), metrics


def dcl_loss(z1: Array, z2: Array, *, temperature: float | Array = 0.5,
             tau_plus: float | Array = 0.1, axis_name: Any = None,
             block_size: int | None = None) -> Array:
  r"""Debiased contrastive loss (DCL) of Chuang et al., NeurIPS 2020.

  :func:`hcl_loss` with ``beta = 0``: uniform weights over the negatives, so

  .. math::

    Ng_i = \max\Big(\frac{\sum_{j \ne i, p(i)} e^{s_{ij}} - \tau^+ N e^{s_{i p(i)}}}
                         {1 - \tau^+},\; N e^{-1/t}\Big).

  Args:
    z1, z2: [B, D] projections of the two views, as in :func:`hcl_loss`.
    temperature: t > 0, scalar.
    tau_plus: class prior in [0, 1), scalar.
    axis_name, block_size: as in :func:`hcl_loss`.

  Returns:
    A float32 scalar: the mean loss over the 2B anchors.

  References:
    Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased Contrastive Learning",
    NeurIPS 2020. https://arxiv.org/abs/2007.00224
  """
  return hcl_loss(z1, z2, temperature=temperature, tau_plus=tau_plus, beta=0.0,
                  axis_name=axis_name, block_size=block_size)


def nt_xent_loss(z1: Array, z2: Array, *, temperature: float | Array = 0.5, axis_name: Any = None,
                 block_size: int | None = None) -> Array:
  r"""NT-Xent, the SimCLR loss (Chen et al., ICML 2020).

  :func:`hcl_loss` with ``beta = 0, tau_plus = 0`` (the clamp can't bind):

  .. math::

    \mathcal{L} = \frac{1}{2B} \sum_i -\log
        \frac{e^{s_{i p(i)}}}{e^{s_{i p(i)}} + \sum_{j \ne i, p(i)} e^{s_{ij}}}.

  Args:
    z1, z2: [B, D] projections of the two views, as in :func:`hcl_loss`.
    temperature: t > 0, scalar.
    axis_name, block_size: as in :func:`hcl_loss`.

  Returns:
    A float32 scalar: the mean loss over the 2B anchors.

  References:
    Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML 2020. https://arxiv.org/abs/2002.05709
  """
  return hcl_loss(z1, z2, temperature=temperature, tau_plus=0.0, beta=0.0,
                  axis_name=axis_name, block_size=block_size)


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


def _compute_dtype(z: Array) -> Any:
  """float32 for half-precision and float32 inputs; float64 stays float64."""
  return jnp.promote_types(z.dtype, jnp.float32)


# ----------------------------------------------------------------------------
# Argument checks: a one-line ValueError naming the value and what is allowed.
# ----------------------------------------------------------------------------
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


def _check_block_size(block_size: Any) -> None:
  if block_size is None:
    return
  if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
    raise ValueError(
        f"block_size must be None (the default, {DEFAULT_BLOCK_SIZE}) or an integer >= 1; "
        f"got {block_size!r}.")


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


# ----------------------------------------------------------------------------
# Inputs sharded over Explicit mesh axes: the axis_name path, per shard.
# ----------------------------------------------------------------------------
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
