"""Optimisers: the paper's Adam (L2 weight decay) and SimCLR's LARS recipe."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "lars")

Schedule = Callable[[jax.Array | int], jax.Array]


def validate_optimizer_config(config: Any) -> None:
  """Raises ValueError naming the bad ``config.optimizer`` key."""
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name must be one of {OPTIMIZERS}; got {opt.name!r}.")
  lr = opt.learning_rate
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
    raise ValueError(f"config.optimizer.learning_rate must be a number > 0; got {lr!r}.")
  wd = opt.weight_decay
  if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not wd >= 0:
    raise ValueError(f"config.optimizer.weight_decay must be a number >= 0; got {wd!r}.")
  warmup = opt.get("warmup_epochs", 0)
  if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not warmup >= 0:
    raise ValueError(f"config.optimizer.warmup_epochs must be a number >= 0; got {warmup!r}.")
  if opt.name == "lars" and warmup > config.num_epochs:
    raise ValueError(
        f"config.optimizer.warmup_epochs ({warmup!r}) must not exceed config.num_epochs "
        f"({config.num_epochs!r}).")


def _decay_and_adapt_mask(params: Any) -> Any:
  """SimCLR's LARS: no weight decay / trust ratio for biases and BN params (1-D)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Any, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Schedule]:
  """``(optimizer, lr_schedule)`` for ``config.optimizer``.

  - ``adam``: PyTorch ``Adam(lr, weight_decay)`` of the published code: the
    decay is an L2 term added to the gradient before Adam's moments
    (``chain(add_decayed_weights(wd), adam(lr))``), not AdamW; constant lr.
  - ``lars``: SimCLR's large-batch recipe: linear warmup from 0 over
    ``warmup_epochs`` to ``learning_rate`` (give it already scaled, e.g.
    0.3 * batch / 256), then cosine decay to 0 at ``num_epochs``; momentum
    0.9, trust coefficient 1e-3; biases and BatchNorm parameters get neither
    weight decay nor trust-ratio scaling.

  Args:
    config: the full config (uses ``optimizer.*`` and ``num_epochs``).
    steps_per_epoch: optimizer steps per epoch (>= 1).

  Returns:
    The optax transformation and the schedule ``step -> lr`` (float32).
  """
  validate_optimizer_config(config)
  if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be an int >= 1; got {steps_per_epoch!r}.")
  opt = config.optimizer
  lr = float(opt.learning_rate)
  if opt.name == "adam":
    schedule = lambda step: jnp.full((), lr, jnp.float32)
    tx = optax.chain(optax.add_decayed_weights(float(opt.weight_decay)), optax.adam(lr))
    return tx, schedule
  total_steps = max(int(config.num_epochs * steps_per_epoch), 1)
  warmup_steps = int(round(opt.get("warmup_epochs", 0) * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  tx = optax.lars(learning_rate=schedule, weight_decay=float(opt.weight_decay),
                  weight_decay_mask=_decay_and_adapt_mask,
                  trust_ratio_mask=_decay_and_adapt_mask, momentum=0.9)
  return tx, schedule
