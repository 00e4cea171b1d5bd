"""Optimisers: the paper's Adam (L2 weight decay) and SimCLR's LARS recipe.

``make_optimizer(config, steps_per_epoch)`` builds the run's optimizer once
(``hcl_jax.main``); the train state carries it (``TrainState.tx``).
``config.optimizer`` is checked by ``hcl_jax.config.check.validate``, not here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hcl_jax.config import values as checks
from hcl_jax.config.registry import OPTIMIZERS

Schedule = Callable[[jax.Array | int], jax.Array]


def _decay_and_adapt_mask(params: Any) -> Any:
  """SimCLR's LARS: no weight decay / trust ratio for biases and BN params (1-D)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation and its learning-rate schedule, from their hyperparameters.

  Used as an ``optax.GradientTransformation`` (``init``, ``update``) and as the
  schedule (``schedule(step) -> lr``, float32). Equal and hashed by the
  hyperparameters, not by the closures optax builds: it is a static field of
  ``TrainState``, so part of the state's tree structure, and two states of
  one config (a checkpoint restored onto a fresh template, jit's cache) must
  have the same structure.

  Attributes:
    name: "adam" or "lars" (see :func:`make_optimizer`).
    learning_rate: adam's constant lr; lars's peak lr.
    weight_decay: adam's L2 term; lars's decoupled decay (kernels only).
    warmup_steps: lars only: linear warmup from 0.
    total_steps: lars only: the cosine decay reaches 0 here.
  """
  name: str
  learning_rate: float
  weight_decay: float
  warmup_steps: int = 0
  total_steps: int = 1

  @functools.cached_property
  def schedule(self) -> Schedule:
    if self.name == "adam":
      return lambda step: jnp.full((), self.learning_rate, jnp.float32)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=self.learning_rate, warmup_steps=self.warmup_steps,
        decay_steps=max(self.total_steps, self.warmup_steps + 1), end_value=0.0)

  @functools.cached_property
  def transformation(self) -> optax.GradientTransformation:
    if self.name == "adam":
      return optax.chain(optax.add_decayed_weights(self.weight_decay),
                         optax.adam(self.learning_rate))
    return optax.lars(learning_rate=self.schedule, weight_decay=self.weight_decay,
                      weight_decay_mask=_decay_and_adapt_mask,
                      trust_ratio_mask=_decay_and_adapt_mask, momentum=0.9)

  def init(self, params: Any) -> Any:
    return self.transformation.init(params)

  def update(self, updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    return self.transformation.update(updates, state, params)


def make_optimizer(config: Any, steps_per_epoch: int) -> Optimizer:
  """The :class:`Optimizer` of ``config.optimizer``.

  - ``adam``: PyTorch ``Adam(lr, weight_decay)`` of the published code: the
    decay is an L2 term added to the gradient before Adam's moments
    (``chain(add_decayed_weights(wd), adam(lr))``), not AdamW; constant lr.
  - ``lars``: SimCLR's large-batch recipe: linear warmup from 0 over
    ``warmup_epochs`` to ``learning_rate`` (give it already scaled, e.g.
    0.3 * batch / 256), then cosine decay to 0 at ``num_epochs``; momentum
    0.9, trust coefficient 1e-3; biases and BatchNorm parameters get neither
    weight decay nor trust-ratio scaling.

  Args:
    config: the full config, validated by ``config_check.validate`` (uses
      ``optimizer.*`` and ``num_epochs``).
    steps_per_epoch: optimizer steps per epoch (>= 1).
  """
  checks.int_at_least("steps_per_epoch", steps_per_epoch, 1)
  opt = config.optimizer
  lr, weight_decay = float(opt.learning_rate), float(opt.weight_decay)
  if opt.name == "adam":
    return Optimizer("adam", lr, weight_decay)
  return Optimizer("lars", lr, weight_decay,
                   warmup_steps=int(round(opt.warmup_epochs * steps_per_epoch)),
                   total_steps=max(int(config.num_epochs * steps_per_epoch), 1))
