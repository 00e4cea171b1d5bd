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
    "l2_normalize",
]

# name -> (stage sizes, block, expansion)
MODELS = {
    "resnet18": ((2, 2, 2, 2), BasicBlock, 1),
    "resnet34": ((3, 4, 6, 3), BasicBlock, 1),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock, 4),
}


def bn_groups_for(model_config: Any, batch_size: int) -> int:
  """Ghost-BN chunks per view of a ``batch_size``-image pre-training batch.

  ``config.model.bn_group_size`` = 0 (the default): 1, statistics over the
  whole per-view batch. Else ``batch_size // bn_group_size``: the number of
  GPUs of a DataParallel run whose every BatchNorm sees ``bn_group_size``
  images of one view (the published run: 256 / 128 = 2). The published
  readout splits its batches into the same number of chunks.
  """
  size = int(model_config.bn_group_size)
  return 1 if size == 0 else max(1, batch_size // size)


def create_model(config: Any) -> ContrastiveModel:
  """The model of ``config.model``; bf16 compute if ``config.mixed_precision``.

  Parameters are float32 either way. Features have ``512 * width * expansion``
  (rounded) dimensions: 512 for ResNet-18/34, 2048 for ResNet-50 at width 1.
  ``config`` is validated by ``hcl_jax.config.check.validate``.
  """
  stage_sizes, block_cls, _ = MODELS[config.model.name]
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  norm = functools.partial(ViewBatchNorm, momentum=0.9, epsilon=1e-5)
  encoder = ResNet(stage_sizes=stage_sizes, block_cls=block_cls,
                   base_width=int(round(64 * config.model.width_multiplier)),
                   stem=config.model.stem, norm=norm, dtype=dtype)
  head = ProjectionHead(hidden_dim=config.model.projection_hidden_dim,
                        out_dim=config.model.projection_dim, norm=norm, dtype=dtype)
  return ContrastiveModel(encoder=encoder, head=head)
