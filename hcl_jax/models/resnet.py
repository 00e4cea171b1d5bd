"""ResNet encoders and the SimCLR/HCL projection head (flax.linen, NHWC).

Architecture of the published HCL code (torchvision ResNets with a CIFAR stem
and a two-layer projection head): ``features -> Linear(512, no bias) ->
BatchNorm -> ReLU -> Linear(128)``. Features come out L2-normalised (the
kNN and the readout read them); projections don't: the loss normalises its
inputs (``hcl_jax.losses``), once.

Two-view batches. The published code runs the two views through the network
one after the other, so every BatchNorm sees the statistics of one view. Here
both views go through in ONE forward pass (one big batch is faster), laid out
image-major / view-minor: row ``n`` of the ``[V * B, ...]`` input is view
``n % V`` of image ``n // V``. :class:`ViewBatchNorm` computes its statistics
per view (over the ``B`` rows of that view, on all devices), which reproduces
the per-view statistics of the published code exactly, and the layout keeps
both views of an image on the same device when the batch is sharded, so
stacking the views costs no communication.

Ghost BatchNorm (``num_groups > 1``, from ``config.model.bn_group_size``):
the published run used two GPUs with ``nn.DataParallel``, which splits each
forward's batch into contiguous chunks (``torch.chunk``), one per GPU, and
every BatchNorm replica normalises its chunk with the chunk's own statistics.
With ``num_groups = G`` each view's ``B`` rows are split the same way: chunk
size ``ceil(B / G)``, row ``b`` of the view in chunk ``b // ceil(B / G)``
(so, like torch.chunk, fewer than G chunks when B is small).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hcl_jax.losses import l2_normalize

from hcl_jax.config.registry import STEMS

ModuleDef = Any
Array = jax.Array

# torchvision's ResNet init: kaiming normal, fan_out, for every conv.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ViewBatchNorm(nn.Module):
  """BatchNorm whose training statistics are per view of a multi-view batch.

  In training mode the leading axis (``N = V * B`` rows, image-major /
  view-minor: row ``n`` is view ``n % num_views``) is split into ``num_views``
  groups and each group is normalised with its own mean and biased variance
  over every axis but the last (features/channels). Under ``jax.jit`` with a
  batch sharded over a mesh these reductions run over the global batch, so
  the result is independent of the number of devices.

  The running averages are updated once per call with the mean over views of
  the per-view statistics (PyTorch would apply two momentum updates in a row,
  one per view; the difference is O(momentum^2) and affects only evaluation).
  Statistics are computed in float32 whatever the compute dtype.

  With ``num_groups = G > 1`` (ghost BatchNorm, see the module docstring)
  each view's rows are further split into contiguous chunks of
  ``ceil(B / G)`` rows, and each chunk is normalised with its own
  statistics; the running averages get the mean of the chunks' statistics
  (DataParallel keeps only GPU 0's; the mean has less noise, and the running
  averages only matter for evaluation).

  Attributes:
    use_running_average: evaluation mode (normalise with the running averages).
    num_views: V, the number of views stacked in the leading axis (1: plain BN).
    num_groups: G, ghost-BN chunks per view (1: statistics over the whole view).
    momentum: running average decay (0.9 here = PyTorch momentum 0.1).
    epsilon: added to the variance (PyTorch's 1e-5).
    dtype: output dtype (None: input dtype).
    scale_init: initialiser of the per-channel scale.
  """
  use_running_average: bool = False
  num_views: int = 1
  num_groups: int = 1
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable[..., Array] = nn.initializers.ones_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N, ..., C] -> [N, ..., C]."""
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (features,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    dtype = self.dtype or x.dtype

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
      y = (x.astype(jnp.float32) - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
      return y.astype(dtype)

    views = self.num_views
    if x.shape[0] % views:
      raise ValueError(
          f"ViewBatchNorm: the batch ({x.shape[0]} rows) must be a multiple of num_views={views}.")
    # [N, ..., C] -> [B, V, M, C]: statistics over B and M (batch and spatial).
    xf = x.astype(jnp.float32).reshape(x.shape[0] // views, views, -1, features)
    if self.num_groups == 1:
      mean = jnp.mean(xf, axis=(0, 2))                                    # [V, C]
      var = jnp.maximum(jnp.mean(jnp.square(xf), axis=(0, 2)) - jnp.square(mean), 0.0)
      ra_mean_new, ra_var_new = jnp.mean(mean, axis=0), jnp.mean(var, axis=0)
      mul = jax.lax.rsqrt(var + self.epsilon) * scale                       # [V, C]
      add = bias - mean * mul
      y = xf * mul[None, :, None, :] + add[None, :, None, :]
    else:
      rows = xf.shape[0]
      chunk = -(-rows // self.num_groups)
      groups = -(-rows // chunk)                  # torch.chunk: maybe fewer chunks
      one_hot = jax.nn.one_hot(jnp.arange(rows) // chunk, groups, dtype=jnp.float32)  # [B, G]
      counts = jnp.sum(one_hot, axis=0) * xf.shape[2]                      # [G]
      mean = jnp.einsum("bg,bvmc->gvc", one_hot, xf) / counts[:, None, None]
      var = jnp.maximum(jnp.einsum("bg,bvmc->gvc", one_hot, jnp.square(xf))
                        / counts[:, None, None] - jnp.square(mean), 0.0)  # [G, V, C]
      ra_mean_new, ra_var_new = jnp.mean(mean, axis=(0, 1)), jnp.mean(var, axis=(0, 1))
      mul = jax.lax.rsqrt(var + self.epsilon) * scale                       # [G, V, C]
      add = bias - mean * mul
      row_mul = jnp.einsum("bg,gvc->bvc", one_hot, mul)                     # [B, V, C]
      row_add = jnp.einsum("bg,gvc->bvc", one_hot, add)
      y = xf * row_mul[:, :, None, :] + row_add[:, :, None, :]
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * ra_mean_new
      ra_var.value = m * ra_var.value + (1.0 - m) * ra_var_new
    return y.reshape(x.shape).astype(dtype)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: two 3x3 convs. Output channels = filters."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """ResNet-50 block: 1x1, 3x3 (strided, as torchvision v1.5), 1x1 x4."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * self.expansion, (1, 1))(y))
    if residual.shape != y.shape:
      residual = self.conv(self.filters * self.expansion, (1, 1),
                           (self.strides, self.strides), name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet trunk up to global average pooling.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: BasicBlock or BottleneckBlock.
    base_width: channels of the stem and first stage (64 x width multiplier).
    stem: "cifar" (3x3 conv stride 1, no max-pool: 32x32 stays 32x32 in
      stage 1) or "imagenet" (7x7 conv stride 2, 3x3 max-pool stride 2).
    conv: conv ModuleDef, called as conv(features, kernel_size, strides, name=).
    norm: norm ModuleDef, called as norm(name=); receives
      ``use_running_average`` and ``num_views`` bound by this module.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  base_width: int = 64
  stem: str = "cifar"
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = ViewBatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, num_views: int = 1,
               bn_groups: int = 1) -> Array:
    """x: [N, H, W, 3] -> features [N, F] (F = 8 * base_width * expansion).

    ``bn_groups``: ghost-BN chunks per view in training mode (ViewBatchNorm).
    """
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(self.norm, use_running_average=not train,
                             num_views=num_views, num_groups=bn_groups, dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = conv(self.base_width, (3, 3), (1, 1), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
    elif self.stem == "imagenet":
      x = conv(self.base_width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"stem must be one of {STEMS}; got {self.stem!r}.")
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.base_width * 2**i, conv=conv, norm=norm, strides=strides,
                           name=f"stage{i + 1}_block{j + 1}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ProjectionHead(nn.Module):
  """Linear(hidden, no bias) -> BatchNorm -> ReLU -> Linear(out, bias)."""
  hidden_dim: int = 512
  out_dim: int = 128
  norm: ModuleDef = ViewBatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, num_views: int = 1,
               bn_groups: int = 1) -> Array:
    """x: [N, F] -> [N, out_dim] (not normalised)."""
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype, name="hidden")(x)
    x = self.norm(use_running_average=not train, num_views=num_views, num_groups=bn_groups,
                  dtype=self.dtype, name="hidden_norm")(x)
    x = nn.relu(x)
    return nn.Dense(self.out_dim, use_bias=True, dtype=self.dtype, name="out")(x)


class ContrastiveModel(nn.Module):
  """Encoder + projection head; features L2-normalised, projections as the head gives them.

  ``__call__(x, train)`` returns ``(features [N, F], projections [N, P])``;
  ``encode(x)`` returns only the features (evaluation mode, running BN stats),
  via ``model.apply(variables, x, method=ContrastiveModel.encode)``.
  """
  encoder: ResNet
  head: ProjectionHead

  def __call__(self, x: Array, train: bool, num_views: int = 1,
               bn_groups: int = 1) -> tuple[Array, Array]:
    """x: [N, H, W, 3] (views image-major/view-minor if num_views > 1).

    ``bn_groups``: ghost-BN chunks per view (``bn_groups_for``).

    Returns float32 ``(features [N, F], projections [N, P])``: features of
    unit L2 norm; projections not normalised, since the loss normalises them
    (the published code normalises both here and the loss gets unit rows:
    the same loss, up to rounding). The head sees the unnormalised features,
    as in the published code.
    """
    h = self.encoder(x, train, num_views, bn_groups)
    z = self.head(h, train, num_views, bn_groups)
    return l2_normalize(h), z.astype(jnp.float32)

  def encode(self, x: Array) -> Array:
    """x: [N, H, W, 3] -> L2-normalised features [N, F] (eval-mode BN)."""
    return l2_normalize(self.encoder(x, False))
