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
    "ProjectionHead", "ResNet", "ViewBatchNorm", "create_model", "l2_normalize",
    "validate_model_config",
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
