"""Encoders: ResNet-18/34/50 (CIFAR or ImageNet stem) + projection head."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from hcl_jax.models.resnet import (BasicBlock, BottleneckBlock, ContrastiveModel,
                                   ProjectionHead, ResNet, STEMS, ViewBatchNorm,
                                   l2_normalize)

__all__ = [
    "MODELS", "STEMS", "BasicBlock", "BottleneckBlock", "ContrastiveModel",
    "ProjectionHead", "ResNet", "ViewBatchNorm", "bn_groups_for", "create_model",
    "l2_normalize", "validate_bn_group_size", "validate_model_config",
]

# name -> (stage sizes, block, expansion)
MODELS = {
    "resnet18": ((2, 2, 2, 2), BasicBlock, 1),
    "resnet34": ((3, 4, 6, 3), BasicBlock, 1),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock, 4),
}


def validate_model_config(model_config: Any) -> None:
  """Raises ValueError naming the bad ``config.model`` key."""
  name = model_config.name
  if name not in MODELS:
    raise ValueError(f"config.model.name must be one of {sorted(MODELS)}; got {name!r}.")
  if model_config.stem not in STEMS:
    raise ValueError(f"config.model.stem must be one of {STEMS}; got {model_config.stem!r}.")
  width = model_config.width_multiplier
  if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
    raise ValueError(f"config.model.width_multiplier must be a number > 0; got {width!r}.")
  if round(64 * width) < 1:
    raise ValueError(
        f"config.model.width_multiplier={width!r} gives no channels (64 * width < 0.5); "
        "use >= 1/64.")
  for key in ("projection_hidden_dim", "projection_dim"):
    value = model_config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.model.{key} must be an int >= 1; got {value!r}.")


def bn_groups_for(model_config: Any, batch_size: int) -> int:
  """Ghost-BN chunks per view of a ``batch_size``-image pre-training batch.

  ``config.model.bn_group_size`` = 0 (the default): 1, statistics over the
  whole per-view batch. Else ``batch_size // bn_group_size``: the number of
  GPUs of a DataParallel run whose every BatchNorm sees ``bn_group_size``
  images of one view (the published run: 256 / 128 = 2). The published
  readout splits its batches into the same number of chunks.
  """
  size = int(model_config.get("bn_group_size", 0))
  return 1 if size == 0 else max(1, batch_size // size)


def validate_bn_group_size(model_config: Any, batch_size: int) -> None:
  """``config.model.bn_group_size``: 0 or an int >= 2 that divides batch_size."""
  size = model_config.get("bn_group_size", 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0 or size == 1 or (
      size and batch_size % size):
    raise ValueError(
        f"config.model.bn_group_size must be 0 (statistics over the whole per-view batch) or "
        f"an int >= 2 dividing config.batch_size={batch_size}; got {size!r}.")


def create_model(config: Any) -> ContrastiveModel:
  """The model of ``config.model``; bf16 compute if ``config.mixed_precision``.

  Parameters are float32 either way. Features have ``512 * width * expansion``
  (rounded) dimensions: 512 for ResNet-18/34, 2048 for ResNet-50 at width 1.
  """
  validate_model_config(config.model)
  stage_sizes, block_cls, _ = MODELS[config.model.name]
  dtype = jnp.bfloat16 if config.get("mixed_precision", False) else jnp.float32
  norm = functools.partial(ViewBatchNorm, momentum=0.9, epsilon=1e-5)
  encoder = ResNet(stage_sizes=stage_sizes, block_cls=block_cls,
                   base_width=int(round(64 * config.model.width_multiplier)),
                   stem=config.model.stem, norm=norm, dtype=dtype)
  head = ProjectionHead(hidden_dim=config.model.projection_hidden_dim,
                        out_dim=config.model.projection_dim, norm=norm, dtype=dtype)
  return ContrastiveModel(encoder=encoder, head=head)
