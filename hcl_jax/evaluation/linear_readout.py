"""Linear readout of a frozen encoder: the paper's protocol and a fast variant.

Both follow the published ``linear.py`` of Robinson et al. (ICLR 2021):

* ``train_linear_readout_augmented``: the paper's linear readout: frozen
  encoder, one ``nn.Linear(F, classes)`` with bias, Adam lr 1e-3 with weight
  decay 1e-6 as an L2 term added to the gradient (torch's
  ``Adam(weight_decay=...)``), batch 512, cross-entropy, 100 epochs, features
  recomputed every epoch from augmented train images, and the last partial
  batch kept (``DataLoader`` without ``drop_last``).
* ``train_linear_readout``: the fast mode: features computed once, without
  augmentation (:func:`hcl_jax.evaluation.features.extract_features`), and the same
  linear layer trained on the cached features with the same optimizer and
  update step. It is about 100x cheaper (one encoder pass instead of one per
  epoch), but sees every image in one fixed view, so it regularises less: it
  can overfit the train set more and its test accuracy typically differs from
  the paper's protocol by a little (either way). Use it for monitoring and
  sweeps; report the augmented mode for numbers comparable to the paper.

The third protocol, ``linear.py`` with the network in train mode, is
:mod:`hcl_jax.evaluation.readout_published`; it reuses ``update`` and the checks here.

Notes on the reference code that callers building ``encode_fn`` should know:
``linear.py`` trains the classifier on the *un-normalised* flattened backbone
feature. It also leaves the whole network in train mode during the readout,
so the frozen encoder's BatchNorm uses batch statistics there; a JAX
``encode_fn`` normally uses the running averages (inference mode), which is
also what padding needs (see ``train_linear_readout_augmented``).

With a ``mesh``, minibatches are split over ``hcl_jax.distributed.mesh.DATA_AXIS``; the
cached features (fast mode), the parameters and the optimizer state are
replicated (see :mod:`hcl_jax.evaluation.features`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hcl_jax.config import values as checks
from hcl_jax.distributed import compile_sync
from hcl_jax.distributed import multihost
from hcl_jax.evaluation.features import (PRECISION, check_batch_labels, check_encoded, check_features,
                              check_labels, num_devices, place_batch, round_up, to_host_batch)
from hcl_jax.distributed.mesh import DATA_AXIS, replicated

Array = jax.Array
Params = dict[str, Array]  # {"kernel": [F, C], "bias": [C]}: flax nn.Dense layout

__all__ = [
    "init_linear_readout",
    "linear_logits",
    "linear_predict",
    "linear_top1",
    "readout_optimizer",
    "check_hyperparameters",
    "update",
    "train_linear_readout",
    "train_linear_readout_augmented",
]


def init_linear_readout(key: Array, feature_dim: int, num_classes: int) -> Params:
  """PyTorch ``nn.Linear(feature_dim, num_classes)`` initialisation.

  Kernel and bias are both uniform in +-1/sqrt(feature_dim), as torch does.

  Returns:
    {"kernel": [F, C] float32, "bias": [C] float32}, the parameter layout of
    flax ``nn.Dense(num_classes)`` (``nn.Dense(C).apply({"params": p}, x)``).
  """
  feature_dim = checks.int_at_least("feature_dim", feature_dim, 1)
  num_classes = checks.int_at_least("num_classes", num_classes, 1)
  bound = 1.0 / math.sqrt(feature_dim)
  kernel_key, bias_key = jax.random.split(key)
  return {
      "kernel": jax.random.uniform(kernel_key, (feature_dim, num_classes), jnp.float32,
                                   -bound, bound),
      "bias": jax.random.uniform(bias_key, (num_classes,), jnp.float32, -bound, bound),
  }


def linear_logits(params: Params, features: Array) -> Array:
  """[B, C] float32 logits of [B, F] features."""
  return (jnp.matmul(features.astype(jnp.float32), params["kernel"], precision=PRECISION)
          + params["bias"])


def readout_optimizer(learning_rate: float = 1e-3,
                      weight_decay: float = 1e-6) -> optax.GradientTransformation:
  """torch ``Adam(lr, weight_decay)``: L2 added to the gradient, then Adam.

  (Not AdamW: the decay goes through Adam's normalisation, as in torch.)
  """
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def _masked_cross_entropy(params: Params, features: Array, labels: Array,
                          mask: Array) -> Array:
  """Mean cross-entropy over the rows where ``mask`` is true (0 if none)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(linear_logits(params, features), labels)
  mask = mask.astype(jnp.float32)
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def update(optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
           features: Array, labels: Array, mask: Array) -> tuple[Params, Any, Array]:
  """One optimizer step on one (masked) minibatch: the step every readout shares."""
  loss, grads = jax.value_and_grad(_masked_cross_entropy)(params, features, labels, mask)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.lru_cache(maxsize=None)
def _step_fn(learning_rate: float, weight_decay: float,
             mesh: Mesh | None) -> Callable[..., tuple[Params, Any, Array]]:
  """Jitted ``update`` on a batch already placed on the devices."""
  fn = functools.partial(update, readout_optimizer(learning_rate, weight_decay))
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0, 1))
  # Inputs keep the shardings they come with (the batch is placed by
  # ``place_batch``, features by ``encode_fn``); params come out replicated.
  rep = replicated(mesh)
  return compile_sync.synced_first_call(
      jax.jit(fn, out_shardings=(rep, rep, rep), donate_argnums=(0, 1)), "readout_step")


def _epoch_permutation(seed: int, epoch: int, num_rows: int) -> Array:
  """The fast mode's shuffle of epoch ``epoch``: a permutation of [num_rows]."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), epoch)
  return jax.random.permutation(key, num_rows)


def _cached_epoch(optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
                  features: Array, labels: Array, order: Array, *,
                  batch_size: int, padded_batch_size: int,
                  mesh: Mesh | None) -> tuple[Params, Any, Array]:
  """One epoch of the fast mode: every row once, in ``order``, minibatch by minibatch.

  Args:
    features: [N, F] cached features (replicated).
    labels: [N] int32.
    order: [N] permutation of the rows.

  Returns:
    (params, opt_state, mean over minibatches of the minibatch loss).
  """
  num_rows = features.shape[0]
  num_batches = -(-num_rows // batch_size)
  # [num_batches, batch_size] row ids, -1 past the end (the last partial
  # batch); then -1 columns up to a multiple of the device count.
  index = jnp.full((num_batches * batch_size,), -1, jnp.int32).at[:num_rows].set(order)
  index = index.reshape(num_batches, batch_size)
  index = jnp.pad(index, ((0, 0), (0, padded_batch_size - batch_size)), constant_values=-1)
  mask = index >= 0
  safe = jnp.maximum(index, 0)
  batch_features = features[safe]  # [num_batches, padded, F]
  batch_labels = labels[safe]
  if mesh is not None:
    rows = NamedSharding(mesh, P(None, DATA_AXIS))
    batch_features = jax.lax.with_sharding_constraint(batch_features, rows)
    batch_labels = jax.lax.with_sharding_constraint(batch_labels, rows)
    mask = jax.lax.with_sharding_constraint(mask, rows)

  def body(carry, batch):
    params, opt_state = carry
    params, opt_state, loss = update(optimizer, params, opt_state, *batch)
    return (params, opt_state), loss

  (params, opt_state), losses = jax.lax.scan(
      body, (params, opt_state), (batch_features, batch_labels, mask))
  return params, opt_state, jnp.mean(losses)


@functools.lru_cache(maxsize=None)
def _cached_epoch_fn(learning_rate: float, weight_decay: float, batch_size: int,
                     padded_batch_size: int, mesh: Mesh | None) -> Callable[..., Any]:
  fn = functools.partial(_cached_epoch, readout_optimizer(learning_rate, weight_decay),
                         batch_size=batch_size, padded_batch_size=padded_batch_size, mesh=mesh)
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0, 1))
  rep = replicated(mesh)
  return compile_sync.synced_first_call(
      jax.jit(fn, in_shardings=(rep,) * 5, out_shardings=(rep,) * 3, donate_argnums=(0, 1)),
      "readout_epoch")


def check_hyperparameters(num_classes: Any, epochs: Any, learning_rate: Any, weight_decay: Any,
                          seed: Any) -> tuple[int, int, float, float, int]:
  """The readouts' shared arguments, checked: (num_classes, epochs, lr, decay, seed)."""
  return (checks.int_at_least("num_classes", num_classes, 1),
          checks.int_at_least("epochs", epochs, 0),
          checks.positive_number("learning_rate", learning_rate),
          checks.nonnegative_number("weight_decay", weight_decay),
          checks.int_at_least("seed", seed, 0))


def train_linear_readout(train_features: Any, train_labels: Any, *, num_classes: int,
                         epochs: int, batch_size: int = 512, learning_rate: float = 1e-3,
                         weight_decay: float = 1e-6, seed: int = 0, mesh: Mesh | None = None,
                         on_epoch_end: Callable[[int, float], None] | None = None) -> Params:
  """Fast-mode linear readout: trains ``nn.Linear`` on cached features.

  Each epoch visits every row once in a fresh shuffle (``seed``, epoch), in
  minibatches of ``batch_size``; the last partial minibatch is kept and its
  loss is the mean over its real rows (as torch's ``DataLoader`` without
  ``drop_last``). A whole epoch is one jitted ``lax.scan``.

  Args:
    train_features: [N, F] float features (used as given: not normalised).
    train_labels: [N] int labels in [0, num_classes).
    num_classes: C >= 1.
    epochs: >= 0 (the paper: 100).
    batch_size: >= 1 rows per step (the paper: 512).
    learning_rate, weight_decay: torch-Adam style, see ``readout_optimizer``.
    seed: initialisation and shuffling.
    mesh: if given, minibatch rows are split over ``DATA_AXIS`` (padded with
      masked rows to a multiple of the device count); features, params and
      optimizer state are replicated.
    on_epoch_end: called as ``on_epoch_end(epoch, mean_minibatch_loss)``.

  Returns:
    {"kernel": [F, C], "bias": [C]} float32 (replicated if ``mesh``).
  """
  num_classes, epochs, learning_rate, weight_decay, seed = check_hyperparameters(
      num_classes, epochs, learning_rate, weight_decay, seed)
  batch_size = checks.int_at_least("batch_size", batch_size, 1)
  train_features = check_features("train_features", train_features)
  train_labels = check_labels("train_labels", train_labels, num_rows=train_features.shape[0],
                               rows_name="train_features", num_classes=num_classes)
  num_rows, feature_dim = train_features.shape
  if num_rows < 1:
    raise ValueError("train_features must have at least one row; got 0.")

  params = init_linear_readout(jax.random.PRNGKey(seed), feature_dim, num_classes)
  opt_state = readout_optimizer(learning_rate, weight_decay).init(params)
  batch_size = min(batch_size, num_rows)
  padded = round_up(batch_size, num_devices(mesh))
  features = jnp.asarray(train_features, dtype=jnp.float32)
  labels = jnp.asarray(train_labels)
  if mesh is not None:
    put = functools.partial(multihost.put_replicated, mesh=mesh)
    params, opt_state, features, labels = put((params, opt_state, features, labels))
  epoch_fn = _cached_epoch_fn(learning_rate, weight_decay, batch_size, padded, mesh)
  for epoch in range(epochs):
    order = _epoch_permutation(seed, epoch, num_rows)
    if mesh is not None:
      order = multihost.put_replicated(order, mesh)
    params, opt_state, loss = epoch_fn(params, opt_state, features, labels, order)
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(loss))
  return params



def train_linear_readout_augmented(
    encode_fn: Callable[[Array], Array],
    make_train_iterator: Callable[[int], Iterable[Mapping[str, Any]]], *,
    num_classes: int, epochs: int, learning_rate: float = 1e-3, weight_decay: float = 1e-6,
    seed: int = 0, mesh: Mesh | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None) -> Params:
  """The paper's linear readout: features recomputed from augmented images each step.

  Args:
    encode_fn: frozen encoder, [b, H, W, 3] images -> [b, F] features (jitted
      by the caller). Padded rows (masked ones, and with a ``mesh`` the zero
      rows added up to a multiple of the device count) go through it too, so
      it must treat rows independently (e.g. BatchNorm with running averages).
    make_train_iterator: ``make_train_iterator(epoch)`` yields the epoch's
      batches {"image": [b, H, W, 3], "label": [b] int, optional "mask": [b]
      bool (false for padding rows)}: shuffled and augmented, the paper's
      batch size 512, the last partial batch kept or padded with mask.
    num_classes, epochs, learning_rate, weight_decay: as in
      ``train_linear_readout``.
    seed: initialisation.
    mesh: if given, each batch is split over ``DATA_AXIS`` before
      ``encode_fn``; params and optimizer state are replicated.
    on_epoch_end: called as ``on_epoch_end(epoch, mean_minibatch_loss)``.

  Returns:
    {"kernel": [F, C], "bias": [C]} float32; F is read off the first batch's
    features. Raises ValueError if the first epoch yields no batch.
  """
  num_classes, epochs, learning_rate, weight_decay, seed = check_hyperparameters(
      num_classes, epochs, learning_rate, weight_decay, seed)
  step = _step_fn(learning_rate, weight_decay, mesh)
  params = opt_state = None
  feature_dim = None
  for epoch in range(epochs):
    losses = []
    for batch in make_train_iterator(epoch):
      images, labels, mask = to_host_batch(batch)
      check_batch_labels(labels[mask], num_classes)
      images, labels, mask = place_batch(images, labels, mask, mesh)
      features = check_encoded(encode_fn(images), labels.shape[0])
      if params is None:
        feature_dim = features.shape[1]
        params = init_linear_readout(jax.random.PRNGKey(seed), feature_dim, num_classes)
        opt_state = readout_optimizer(learning_rate, weight_decay).init(params)
        if mesh is not None:
          params, opt_state = multihost.put_replicated((params, opt_state), mesh)
      elif features.shape[1] != feature_dim:
        raise ValueError(f"encode_fn's feature dim changed from {feature_dim} to "
                         f"{features.shape[1]}.")
      params, opt_state, loss = step(params, opt_state, features, labels, mask)
      losses.append(loss)
    if params is None:
      raise ValueError(f"make_train_iterator({epoch}) yielded no batch.")
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(np.mean([float(l) for l in losses])) if losses else math.nan)
  if params is None:
    raise ValueError("epochs must be >= 1 for the augmented readout (the feature dim is "
                     "read off the first batch); got 0.")
  return params


@jax.jit
def _linear_predict_jit(params: Params, features: Array) -> Array:
  return jnp.argmax(linear_logits(params, features), axis=-1).astype(jnp.int32)


def linear_predict(params: Params, features: Any) -> np.ndarray:
  """[M] int32 host predictions (argmax of the logits) of [M, F] features."""
  features = check_features("features", features)
  kernel_shape = tuple(params["kernel"].shape)
  if features.shape[1] != kernel_shape[0]:
    raise ValueError(f"features must have the readout's feature dim {kernel_shape[0]}; "
                     f"got shape {tuple(features.shape)}.")
  params = jax.device_get(params)  # replicated over a mesh, maybe over processes
  return np.asarray(_linear_predict_jit(params, jnp.asarray(features)))


def linear_top1(params: Params, features: Any, labels: Any) -> float:
  """Top-1 accuracy in [0, 1] of the readout on [M, F] features, [M] labels."""
  features = check_features("features", features)
  num_classes = int(params["kernel"].shape[1])
  labels = check_labels("labels", labels, num_rows=features.shape[0], rows_name="features",
                         num_classes=num_classes)
  if labels.size == 0:
    raise ValueError("linear_top1 needs at least one row; got 0.")
  return float(np.mean(linear_predict(params, features) == labels))
