"""The training step: one pure function, jitted over a device mesh.

The global batch ``{"view1", "view2"}`` (float32 ``[B, H, W, 3]`` each) is
sharded over the mesh's data axis; the state (parameters, BatchNorm
statistics, optimizer state) is replicated and donated. Everything is written
for global arrays, so XLA inserts the collectives: the BatchNorm statistics
and the contrastive loss's negatives span the whole global batch, and the
step gives the same result on 1 device and on 8 (tested), and on a pod by
sharding alone.

Both views go through the encoder in one forward pass of ``2B`` rows, stacked
image-major / view-minor (``[B, 2, H, W, 3] -> [2B, H, W, 3]``) so that both
views of an image stay on the device that holds it. BatchNorm statistics are
per view (:class:`hcl_jax.models.ViewBatchNorm`), as when the published code
runs the two views through the network one after the other.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from hcl_jax.config import check as config_check
from hcl_jax.train import divergence
from hcl_jax import losses
from hcl_jax.distributed import mesh as mesh_lib
from hcl_jax import models
from hcl_jax.train import optim

# The published code's annealing: beta walks through linspace(beta, 0, 9).
NUM_BETA_STEPS = 9

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes (replicated on the mesh).

  As flax's ``flax.training.train_state.TrainState``: the optimizer rides
  along as a static field (``tx``, not a pytree node), so the checkpointed
  pytree is exactly ``step, params, batch_stats, opt_state``.

  Attributes:
    step: int32 scalar, optimizer steps taken so far.
    params: float32 parameters of the model.
    batch_stats: BatchNorm running averages.
    opt_state: the optax state of ``tx``.
    tx: the run's :class:`hcl_jax.train.optim.Optimizer` (``optim.make_optimizer``).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optim.Optimizer = flax.struct.field(pytree_node=False)

  def apply_gradients(self, grads: Any, *, batch_stats: Any) -> TrainState:
    """The state after one optimizer step on ``grads`` (and the step's new BN statistics)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)


def beta_at_step(config: Any, step: jax.Array | int, steps_per_epoch: int) -> jax.Array:
  """The HCL beta used at optimizer step ``step`` (float32 scalar; traceable).

  ``beta_anneal == "none"``: ``config.loss.beta``. ``"down"``: exactly the
  published code's schedule. There, with ``P = int(num_epochs / 9)``, beta
  starts at ``config.loss.beta`` and after every 1-based epoch divisible by
  ``P`` takes the next value of ``linspace(beta, 0, 9)`` (whose first value is
  beta itself). So during 0-based epoch ``e`` beta is
  ``linspace(beta, 0, 9)[clip(e // P - 1, 0, 8)]``: the first value lasts 2P
  epochs, the others P each. (P is at least 1 here, and the index stops at the
  last value, where the published code would divide by zero / run out.)
  """
  beta = float(config.loss.beta)
  if config.loss.beta_anneal == "none":
    return jnp.full((), beta, jnp.float32)
  betas = jnp.asarray(np.linspace(beta, 0.0, NUM_BETA_STEPS), jnp.float32)
  period = max(int(config.num_epochs / NUM_BETA_STEPS), 1)
  epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
  index = jnp.clip(epoch // period - 1, 0, NUM_BETA_STEPS - 1)
  return betas[index]


def _loss_hyperparameters(config: Any, step: jax.Array, steps_per_epoch: int):
  """(temperature, tau_plus, beta) of config.loss.name at ``step``."""
  loss = config.loss
  # A Python 0.0 (not an array) lets the loss skip the hardness weights' sum.
  if loss.name == "nt_xent":
    return float(loss.temperature), 0.0, 0.0
  if loss.name == "dcl":
    return float(loss.temperature), float(loss.tau_plus), 0.0
  return float(loss.temperature), float(loss.tau_plus), beta_at_step(config, step, steps_per_epoch)


def stack_views(batch: Batch) -> jax.Array:
  """``{"view1", "view2"}`` [B, H, W, C] -> [2B, H, W, C], row 2i + v = view v of image i."""
  view1, view2 = batch["view1"], batch["view2"]
  if view1.shape != view2.shape or view1.ndim != 4:
    raise ValueError(
        f"batch['view1'] and batch['view2'] must both have shape [B, H, W, C]; got "
        f"{view1.shape} and {view2.shape}.")
  stacked = jnp.stack([view1, view2], axis=1)
  return stacked.reshape((-1,) + view1.shape[1:])


def build_train_step(config: Any, model: nn.Module, steps_per_epoch: int
                     ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure (unjitted) step ``(state, batch) -> (state, metrics)``; the optimizer is ``state.tx``."""
  block_size = config.loss.block_size
  loss_kwargs = {"block_size": block_size} if block_size else {}

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    images = stack_views(batch)
    num_images = batch["view1"].shape[0]
    temperature, tau_plus, beta = _loss_hyperparameters(config, state.step, steps_per_epoch)

    def loss_fn(params):
      (_, projections), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          num_views=2, bn_groups=models.bn_groups_for(config.model, num_images),
          mutable=["batch_stats"])
      # float32, not normalised: the loss normalises its inputs.
      z = projections.reshape(num_images, 2, -1)
      loss, metrics = losses.hcl_loss_and_metrics(
          z[:, 0], z[:, 1], temperature=temperature, tau_plus=tau_plus, beta=beta,
          **loss_kwargs)
      return loss, (metrics, updates["batch_stats"])

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updated = state.apply_gradients(grads, batch_stats=batch_stats)
    # A non-finite loss, gradient norm or new parameter keeps the state as it
    # was (the step count still moves with the data), so no non-finite value
    # ever reaches a checkpoint; the loop reads `nonfinite` to stop or skip.
    grad_norm = optax.global_norm(grads)
    params_finite = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(updated.params)]))
    nonfinite = (divergence.NONFINITE_LOSS * ~jnp.isfinite(loss)
                 + divergence.NONFINITE_GRAD_NORM * ~jnp.isfinite(grad_norm)
                 + divergence.NONFINITE_PARAMS * ~params_finite)
    keep = lambda new, old: jnp.where(nonfinite == 0, new, old)
    new_state = updated.replace(
        params=jax.tree.map(keep, updated.params, state.params),
        batch_stats=jax.tree.map(keep, updated.batch_stats, state.batch_stats),
        opt_state=jax.tree.map(keep, updated.opt_state, state.opt_state))
    metrics = dict(metrics, loss=loss, beta=beta, lr=state.tx.schedule(state.step),
                   grad_norm=grad_norm, nonfinite=nonfinite)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return train_step


def default_compiler_options(mesh: Mesh) -> dict[str, Any]:
  """XLA options for the step: on CPU, convolutions through Eigen, not YNNPACK.

  This jaxlib's CPU default hands convolutions and dots to YNNPACK; there the
  convolution weight gradients of a ResNet run at 8-50 GFLOP/s on a 2-core
  AVX2 CPU, against 40-160 through XLA's own (Eigen) convolutions, while
  forward and input-gradient convolutions are about as fast either way
  (measured). Keeping YNNPACK for dots only made the ResNet-18 step 1.5-1.8x
  faster than the default (benchmarks/train_bench.py, variants). No options
  elsewhere (TPU, GPU).
  """
  if all(d.platform == "cpu" for d in mesh.devices.flat):
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  return {}


def make_train_step(config: Any, mesh: Mesh, steps_per_epoch: int, model: nn.Module, *,
                    compiler_options: Mapping[str, Any] | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted step over ``mesh``: batch sharded on the data axis, state
  replicated and donated (don't reuse the state passed in).

  Args:
    config: the full config, validated by ``config_check.validate`` (the
      entry point's one check; nothing here checks it again).
    mesh: from :func:`hcl_jax.distributed.mesh.make_mesh`, or a default (Explicit-axis)
      ``jax.make_mesh((n,), ("data",))``: the step then runs with the axis
      Auto inside (``jax.sharding.auto_axes``), since the model's reshapes of
      the sharded batch are written for GSPMD. ``config.batch_size`` must be a
      multiple of its size (checked: the mesh is an argument of its own).
    steps_per_epoch: for the beta annealing (the lr schedule is ``state.tx``'s).
    model: the run's model (``models.create_model(config)``); tests pass tiny nets.
    compiler_options: XLA options for this computation; default
      :func:`default_compiler_options`.

  Returns:
    ``step(state, batch) -> (state, metrics)``, metrics float32 scalars:
    loss, clamped_fraction, positive_similarity, negative_similarity, beta, lr,
    grad_norm, and nonfinite (0 for a good step, else the ``divergence.NONFINITE_*``
    bits of what went non-finite: the state was then left unchanged).
  """
  config_check.check_batch_split(config, mesh.size)
  step = build_train_step(config, model, steps_per_epoch)
  replicated = mesh_lib.replicated(mesh)
  if compiler_options is None:
    compiler_options = default_compiler_options(mesh)
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    # Same result as on an Auto mesh (tested): GSPMD shards the model's
    # reshapes, which Explicit axes would need an out_sharding for each.
    step = jax.sharding.auto_axes(step, out_sharding=(replicated, replicated))
  return jax.jit(step, in_shardings=(replicated, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0,
                 compiler_options=dict(compiler_options) or None)


def create_train_state(model: nn.Module, tx: optim.Optimizer, rng: jax.Array, mesh: Mesh,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initialised state carrying ``tx``, replicated on ``mesh``.

  Args:
    model: the run's model (``models.create_model(config)``).
    tx: the run's optimizer (``optim.make_optimizer(config, steps_per_epoch)``);
      only its schedule depends on steps_per_epoch, not the state's arrays.
    rng: the initialisation key.
    mesh: the device mesh.
    image_shape: (H, W, C) of one image.
  """
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C); got {image_shape!r}.")

  def init(rng):
    variables = model.init(rng, jnp.zeros((2, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), tx=tx)

  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(rng)
