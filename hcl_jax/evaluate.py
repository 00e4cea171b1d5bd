"""Evaluation of a frozen encoder: weighted kNN monitor and linear readout.

Both follow the published code of Robinson et al. (ICLR 2021) and its
predecessor (Chuang et al., NeurIPS 2020):

* ``knn_predict`` / ``knn_top1``: the weighted kNN of ``test()`` in their
  ``main.py`` (itself from InstDisc / SimCLR-pytorch). Features are
  L2-normalised; each test row takes its ``k = 200`` most cosine-similar train
  rows, weights them by ``exp(sim / t)`` with ``t = 0.5``, sums the weights per
  class and predicts the argmax.
* ``train_linear_readout_augmented``: the paper's linear readout (their
  ``linear.py``): frozen encoder, one ``nn.Linear(F, classes)`` with bias,
  Adam lr 1e-3 with weight decay 1e-6 as an L2 term added to the gradient
  (torch's ``Adam(weight_decay=...)``), batch 512, cross-entropy, 100 epochs,
  features recomputed every epoch from augmented train images, and the last
  partial batch kept (``DataLoader`` without ``drop_last``).
* ``train_linear_readout``: the fast mode: features computed once, without
  augmentation (``extract_features``), and the same linear layer trained on
  the cached features with the same optimizer and update step. It is about
  100x cheaper (one encoder pass instead of one per epoch), but sees every
  image in one fixed view, so it regularises less: it can overfit the train
  set more and its test accuracy typically differs from the paper's protocol
  by a little (either way). Use it for monitoring and sweeps; report the
  augmented mode for numbers comparable to the paper.

Notes on the reference code that callers building ``encode_fn`` should know:
the kNN uses the L2-normalised backbone feature (normalised here anyway), but
``linear.py`` trains the classifier on the *un-normalised* flattened backbone
feature. It also leaves the whole network in train mode during the readout,
so the frozen encoder's BatchNorm uses batch statistics there; a JAX
``encode_fn`` normally uses the running averages (inference mode), which is
also what padding needs (see below).

Sharding: with a ``mesh``, every batch (test rows for the kNN, minibatches for
the readout) is split over ``hcl_jax.mesh.DATA_AXIS``; the train feature bank
(kNN), cached features (fast readout) and the parameters and optimizer state
are replicated. Batches whose size is not a multiple of the device count are
padded with masked rows, so a mesh gives the same result as one device up to
float summation order. Results come back replicated, so reading them on the
host works on every process.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hcl_jax import multihost
from hcl_jax.losses import l2_normalize
from hcl_jax.mesh import DATA_AXIS, batch_sharding, replicated

Array = jax.Array
Params = dict[str, Array]  # {"kernel": [F, C], "bias": [C]}: flax nn.Dense layout

__all__ = [
    "knn_scores",
    "knn_predict",
    "knn_top1",
    "init_linear_readout",
    "linear_logits",
    "linear_predict",
    "linear_top1",
    "readout_optimizer",
    "train_linear_readout",
    "train_linear_readout_augmented",
    "extract_features",
    "evaluate_encoder",
]


# Cosine similarities decide which neighbours are kept, and logits are small
# dot products: TPU's default bf16 matmul passes would perturb both, so ask for
# full float32 (the cost is negligible next to the encoder).
_PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------- validation


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def _check_positive_float(name: str, value: Any) -> float:
  try:
    value_f = float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a finite number > 0; got {value!r}.") from e
  if not math.isfinite(value_f) or value_f <= 0:
    raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")
  return value_f


def _check_nonnegative_float(name: str, value: Any) -> float:
  try:
    value_f = float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.") from e
  if not math.isfinite(value_f) or value_f < 0:
    raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
  return value_f


def _check_features(name: str, features: Any) -> np.ndarray | Array:
  if not hasattr(features, "shape") or not hasattr(features, "dtype"):
    features = np.asarray(features)
  if len(features.shape) != 2:
    raise ValueError(
        f"{name} must have rank 2 ([rows, feature dim]); got shape {tuple(features.shape)}.")
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype; got {features.dtype}.")
  if features.shape[1] < 1:
    raise ValueError(f"{name} must have a feature dim >= 1; got shape {tuple(features.shape)}.")
  return features


def _check_labels(name: str, labels: Any, *, num_rows: int, rows_name: str,
                  num_classes: int) -> np.ndarray:
  """Labels as host int32 [num_rows], every value in [0, num_classes)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != num_rows:
    raise ValueError(
        f"{name} must have shape [{num_rows}] (one label per row of {rows_name}); "
        f"got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must have an integer dtype; got {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"{name} must lie in [0, num_classes) = [0, {num_classes}); "
        f"got values in [{labels.min()}, {labels.max()}].")
  return labels.astype(np.int32)


def _num_devices(mesh: Mesh | None) -> int:
  return 1 if mesh is None else int(mesh.shape[DATA_AXIS])


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """Zero-pads the leading axis of a host array to ``rows``."""
  if array.shape[0] == rows:
    return array
  pad = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
  return np.pad(array, pad)



# ------------------------------------------------------------------------ kNN


def _knn_chunk_scores(train_features: Array, train_labels: Array,
                      test_features: Array, temperature: Array, *, k: int,
                      num_classes: int) -> Array:
  """Weighted class votes [B, C] of a chunk of test rows (all inputs on device).

  Args:
    train_features: [N, F] L2-normalised float32 feature bank.
    train_labels: [N] int32.
    test_features: [B, F] float, normalised here.
    temperature: scalar kNN temperature.
  """
  test_features = l2_normalize(test_features)
  similarity = jnp.matmul(test_features, train_features.T, precision=_PRECISION)  # [B, N]
  top_similarity, top_index = jax.lax.top_k(similarity, k)  # [B, k]
  # exp(s / t) divided by exp(s_max / t), the nearest neighbour's weight: a
  # positive per-row factor, so the argmax is the reference's, but float32
  # cannot overflow at small temperatures.
  weights = jnp.exp((top_similarity - top_similarity[:, :1]) / temperature)
  one_hot = jax.nn.one_hot(train_labels[top_index], num_classes, dtype=jnp.float32)
  return jnp.einsum("bk,bkc->bc", weights, one_hot, precision=_PRECISION)


@functools.lru_cache(maxsize=None)
def _knn_chunk_fn(k: int, num_classes: int, mesh: Mesh | None) -> Callable[..., Array]:
  fn = functools.partial(_knn_chunk_scores, k=k, num_classes=num_classes)
  if mesh is None:
    return jax.jit(fn)
  rep, rows = replicated(mesh), batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(rep, rep, rows, rep), out_shardings=rep)


def _check_knn_inputs(train_features: Any, train_labels: Any, test_features: Any,
                      num_classes: Any, k: Any, temperature: Any,
                      batch_size: Any) -> tuple[Any, np.ndarray, Any, int, int, float, int]:
  num_classes = _check_int("num_classes", num_classes, minimum=1)
  k = _check_int("k", k, minimum=1)
  temperature = _check_positive_float("temperature", temperature)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  train_features = _check_features("train_features", train_features)
  test_features = _check_features("test_features", test_features)
  if train_features.shape[0] < 1:
    raise ValueError("train_features must have at least one row; got shape "
                     f"{tuple(train_features.shape)}.")
  if test_features.shape[1] != train_features.shape[1]:
    raise ValueError(
        "test_features and train_features must have the same feature dim; got "
        f"{test_features.shape[1]} and {train_features.shape[1]}.")
  train_labels = _check_labels("train_labels", train_labels, num_rows=train_features.shape[0],
                               rows_name="train_features", num_classes=num_classes)
  return train_features, train_labels, test_features, num_classes, k, temperature, batch_size


def knn_scores(train_features: Any, train_labels: Any, test_features: Any, *,
               num_classes: int, k: int = 200, temperature: float = 0.5,
               batch_size: int = 1024, mesh: Mesh | None = None) -> np.ndarray:
  """Weighted kNN class votes of every test row.

  Args:
    train_features: [N, F] float feature bank (L2-normalised here).
    train_labels: [N] int labels in [0, num_classes).
    test_features: [M, F] float (L2-normalised here).
    num_classes: C >= 1.
    k: neighbours per test row, >= 1; clipped to N (the reference's default
      is 200).
    temperature: > 0; each neighbour's weight is exp(cosine / temperature).
    batch_size: test rows per chunk; memory is O(batch_size * N). Rounded up
      to a multiple of the device count when ``mesh`` is given.
    mesh: if given, test chunks are split over ``DATA_AXIS``, the bank is
      replicated.

  Returns:
    [M, C] float32 host array: the reference's per-class sums of
    exp(sim / t), divided per row by exp(s_max / t), the nearest neighbour's
    weight (so the nearest neighbour counts 1; argmax unchanged).
  """
  (train_features, train_labels, test_features, num_classes, k, temperature,
   batch_size) = _check_knn_inputs(train_features, train_labels, test_features,
                                   num_classes, k, temperature, batch_size)
  k = min(k, train_features.shape[0])
  num_test = test_features.shape[0]
  if num_test == 0:
    return np.zeros((0, num_classes), np.float32)
  chunk = _round_up(min(batch_size, num_test), _num_devices(mesh))

  if mesh is None:
    put_rep = put_rows = jnp.asarray
  else:
    # Bank and test rows are the same on every process (see extract_features).
    put_rep = functools.partial(multihost.put_replicated, mesh=mesh)
    put_rows = functools.partial(multihost.put_identical_rows, mesh=mesh)
  bank = put_rep(l2_normalize(jnp.asarray(train_features)))
  bank_labels = put_rep(train_labels)
  temperature_arr = put_rep(np.float32(temperature))
  fn = _knn_chunk_fn(k, num_classes, mesh)

  test_host = np.asarray(test_features, dtype=np.float32)
  scores = []
  for start in range(0, num_test, chunk):
    rows = test_host[start:start + chunk]
    # Pad the last chunk to the common shape: one compilation, and the rows
    # split evenly over the devices. Padded rows are discarded.
    out = fn(bank, bank_labels, put_rows(_pad_rows(rows, chunk)), temperature_arr)
    scores.append(np.asarray(out)[:rows.shape[0]])
  return np.concatenate(scores, axis=0)


def knn_predict(train_features: Any, train_labels: Any, test_features: Any, *,
                num_classes: int, k: int = 200, temperature: float = 0.5,
                batch_size: int = 1024, mesh: Mesh | None = None) -> np.ndarray:
  """Weighted kNN predictions [M] (int32, host) of the test rows.

  Arguments as in ``knn_scores``; the prediction is the argmax of the votes
  (lowest class index on an exact tie).
  """
  scores = knn_scores(train_features, train_labels, test_features, num_classes=num_classes,
                      k=k, temperature=temperature, batch_size=batch_size, mesh=mesh)
  return np.argmax(scores, axis=-1).astype(np.int32)


def knn_top1(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, *,
             num_classes: int, k: int = 200, temperature: float = 0.5,
             batch_size: int = 1024, mesh: Mesh | None = None) -> float:
  """Top-1 accuracy in [0, 1] of the weighted kNN on [M] ``test_labels``."""
  test_features = _check_features("test_features", test_features)
  num_classes = _check_int("num_classes", num_classes, minimum=1)
  test_labels = _check_labels("test_labels", test_labels, num_rows=test_features.shape[0],
                              rows_name="test_features", num_classes=num_classes)
  if test_labels.size == 0:
    raise ValueError("knn_top1 needs at least one test row; got 0.")
  predictions = knn_predict(train_features, train_labels, test_features, num_classes=num_classes,
                            k=k, temperature=temperature, batch_size=batch_size, mesh=mesh)
  return float(np.mean(predictions == test_labels))


# ------------------------------------------------------------ linear readout


def init_linear_readout(key: Array, feature_dim: int, num_classes: int) -> Params:
  """PyTorch ``nn.Linear(feature_dim, num_classes)`` initialisation.

  Kernel and bias are both uniform in +-1/sqrt(feature_dim), as torch does.

  Returns:
    {"kernel": [F, C] float32, "bias": [C] float32}, the parameter layout of
    flax ``nn.Dense(num_classes)`` (``nn.Dense(C).apply({"params": p}, x)``).
  """
  feature_dim = _check_int("feature_dim", feature_dim, minimum=1)
  num_classes = _check_int("num_classes", num_classes, minimum=1)
  bound = 1.0 / math.sqrt(feature_dim)
  kernel_key, bias_key = jax.random.split(key)
  return {
      "kernel": jax.random.uniform(kernel_key, (feature_dim, num_classes), jnp.float32,
                                   -bound, bound),
      "bias": jax.random.uniform(bias_key, (num_classes,), jnp.float32, -bound, bound),
  }


def linear_logits(params: Params, features: Array) -> Array:
  """[B, C] float32 logits of [B, F] features."""
  return (jnp.matmul(features.astype(jnp.float32), params["kernel"], precision=_PRECISION)
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


def _update(optimizer: optax.GradientTransformation, params: Params, opt_state: Any,
            features: Array, labels: Array, mask: Array) -> tuple[Params, Any, Array]:
  """One optimizer step on one (masked) minibatch: the step both modes share."""
  loss, grads = jax.value_and_grad(_masked_cross_entropy)(params, features, labels, mask)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.lru_cache(maxsize=None)
def _step_fn(learning_rate: float, weight_decay: float,
             mesh: Mesh | None) -> Callable[..., tuple[Params, Any, Array]]:
  """Jitted ``_update`` on a batch already placed on the devices."""
  fn = functools.partial(_update, readout_optimizer(learning_rate, weight_decay))
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0, 1))
  # Inputs keep the shardings they come with (the batch is placed by
  # ``_place_batch``, features by ``encode_fn``); params come out replicated.
  rep = replicated(mesh)
  return jax.jit(fn, out_shardings=(rep, rep, rep), donate_argnums=(0, 1))


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
    params, opt_state, loss = _update(optimizer, params, opt_state, *batch)
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
  return jax.jit(fn, in_shardings=(rep,) * 5, out_shardings=(rep,) * 3, donate_argnums=(0, 1))


def _check_readout_hyperparameters(num_classes: Any, epochs: Any, learning_rate: Any,
                                   weight_decay: Any, seed: Any) -> tuple[int, int, float, float, int]:
  return (_check_int("num_classes", num_classes, minimum=1),
          _check_int("epochs", epochs, minimum=0),
          _check_positive_float("learning_rate", learning_rate),
          _check_nonnegative_float("weight_decay", weight_decay),
          _check_int("seed", seed, minimum=0))


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
  num_classes, epochs, learning_rate, weight_decay, seed = _check_readout_hyperparameters(
      num_classes, epochs, learning_rate, weight_decay, seed)
  batch_size = _check_int("batch_size", batch_size, minimum=1)
  train_features = _check_features("train_features", train_features)
  train_labels = _check_labels("train_labels", train_labels, num_rows=train_features.shape[0],
                               rows_name="train_features", num_classes=num_classes)
  num_rows, feature_dim = train_features.shape
  if num_rows < 1:
    raise ValueError("train_features must have at least one row; got 0.")

  params = init_linear_readout(jax.random.PRNGKey(seed), feature_dim, num_classes)
  opt_state = readout_optimizer(learning_rate, weight_decay).init(params)
  batch_size = min(batch_size, num_rows)
  padded = _round_up(batch_size, _num_devices(mesh))
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


def _to_host_batch(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, int32 labels, bool mask) of a {"image", "label"[, "mask"]} batch."""
  for key in ("image", "label"):
    if key not in batch:
      raise ValueError(f"each batch must be a dict with 'image' and 'label' (and optionally "
                       f"'mask'); got keys {sorted(batch)}.")
  images = np.asarray(batch["image"])
  labels = np.asarray(batch["label"])
  rows = images.shape[0] if images.ndim else -1
  if labels.shape != (rows,):
    raise ValueError(f"batch 'label' must have shape [{rows}] (one per image); "
                     f"got {labels.shape} for images of shape {images.shape}.")
  mask = np.asarray(batch["mask"], dtype=bool) if "mask" in batch else np.ones(rows, bool)
  if mask.shape != (rows,):
    raise ValueError(f"batch 'mask' must have shape [{rows}]; got {mask.shape}.")
  return images, labels.astype(np.int32), mask


def _place_batch(images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 mesh: Mesh | None) -> tuple[Any, Any, Any]:
  """Pads a batch with masked rows to a multiple of the device count and shards it.

  With several processes, each one's batch holds its own rows: the global batch
  is their concatenation (each padded to a multiple of its local devices).
  """
  if mesh is None:
    return images, labels, mask
  devices = (multihost.local_device_count(mesh) if multihost.is_multiprocess(mesh)
             else _num_devices(mesh))
  rows = _round_up(images.shape[0], devices)
  images, labels, mask = (_pad_rows(a, rows) for a in (images, labels, mask))
  return multihost.put_rows((images, labels, mask), mesh)


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
  num_classes, epochs, learning_rate, weight_decay, seed = _check_readout_hyperparameters(
      num_classes, epochs, learning_rate, weight_decay, seed)
  step = _step_fn(learning_rate, weight_decay, mesh)
  params = opt_state = None
  feature_dim = None
  for epoch in range(epochs):
    losses = []
    for batch in make_train_iterator(epoch):
      images, labels, mask = _to_host_batch(batch)
      if labels.size and mask.any() and (labels[mask].min() < 0
                                         or labels[mask].max() >= num_classes):
        raise ValueError(f"batch labels must lie in [0, num_classes) = [0, {num_classes}); "
                         f"got values in [{labels[mask].min()}, {labels[mask].max()}].")
      images, labels, mask = _place_batch(images, labels, mask, mesh)
      features = encode_fn(images)
      if len(features.shape) != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"encode_fn must map [b, ...] images to [b, F] features; got shape "
                         f"{tuple(features.shape)} for {labels.shape[0]} images.")
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
  features = _check_features("features", features)
  kernel_shape = tuple(params["kernel"].shape)
  if features.shape[1] != kernel_shape[0]:
    raise ValueError(f"features must have the readout's feature dim {kernel_shape[0]}; "
                     f"got shape {tuple(features.shape)}.")
  params = jax.device_get(params)  # replicated over a mesh, maybe over processes
  return np.asarray(_linear_predict_jit(params, jnp.asarray(features)))


def linear_top1(params: Params, features: Any, labels: Any) -> float:
  """Top-1 accuracy in [0, 1] of the readout on [M, F] features, [M] labels."""
  features = _check_features("features", features)
  num_classes = int(params["kernel"].shape[1])
  labels = _check_labels("labels", labels, num_rows=features.shape[0], rows_name="features",
                         num_classes=num_classes)
  if labels.size == 0:
    raise ValueError("linear_top1 needs at least one row; got 0.")
  return float(np.mean(linear_predict(params, features) == labels))


# ------------------------------------------------------------------ features


def extract_features(encode_fn: Callable[[Array], Array],
                     batches: Iterable[Mapping[str, Any]], *,
                     mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Runs a frozen encoder over a dataset.

  Args:
    encode_fn: [b, H, W, 3] images -> [b, F] features (jitted by the caller).
    batches: yields {"image": [b, H, W, 3], "label": [b] int, optional
      "mask": [b] bool}; rows with a false mask (padding of a final batch)
      are dropped.
    mesh: if given, each batch is split over ``DATA_AXIS`` (padded with
      dropped rows to a multiple of the device count) before ``encode_fn``.
      A mesh over several processes takes each process's own batches (its
      part of the split) and returns every process's rows.

  Returns:
    (features [N, F] float32, labels [N] int32), host arrays, N = number of
    unmasked rows, in iteration order; with several processes, the rows of
    process 0, then of process 1, ... (``multihost.allgather_rows``), the
    same arrays on every process.
  """
  all_features, all_labels = [], []
  for batch in batches:
    images, labels, mask = _to_host_batch(batch)
    num_rows = images.shape[0]
    placed = _place_batch(images, labels, mask, mesh)
    features = encode_fn(placed[0])
    if len(features.shape) != 2 or features.shape[0] != placed[0].shape[0]:
      raise ValueError(f"encode_fn must map [b, ...] images to [b, F] features; got shape "
                       f"{tuple(features.shape)} for {placed[0].shape[0]} images.")
    features = multihost.local_rows(features).astype(np.float32)[:num_rows]
    all_features.append(features[mask])
    all_labels.append(labels[mask])
  if not all_features:
    raise ValueError("batches yielded no batch.")
  return multihost.allgather_rows(np.concatenate(all_features, axis=0),
                                  np.concatenate(all_labels, axis=0))


# ------------------------------------------------------- a trained encoder


def evaluate_encoder(config: Any, model: Any, state: Any, mesh: Mesh | None) -> dict[str, float]:
  """Linear readout and kNN top-1 (in %) of a model's frozen encoder.

  Follows the published code: the kNN (``config.eval.knn_k``,
  ``knn_temperature``) uses the L2-normalised backbone features of the
  unaugmented train split as its bank; the readout trains on the
  un-normalised backbone features, on cached unaugmented features
  (``config.eval.readout == "fast"``), on features of freshly augmented
  train images every epoch with BatchNorm in inference mode (``"augmented"``),
  or as image/linear.py does (``"published"``: augmented images, the network
  in train mode, tested every 5 epochs; hcl_jax/readout_published.py).
  Unaugmented images (kNN bank and test, linear test) have side
  ``config.eval.image_size`` (STL-10: 96, as published).

  Returns {"linear_top1", "knn_top1" (%), "readout", "eval_image_size",
  "bn_group_size"} (+ "linear_tests": [[epoch, top-1 %], ...] for
  "published"): every result says which protocol made it.

  Args:
    config: the run config (dataset, data_dir, image_size, eval.*).
    model: a :class:`hcl_jax.models.ContrastiveModel`.
    state: anything with ``params`` and ``batch_stats`` (a TrainState).
    mesh: batches are split over its data axis; None for one device.
  """
  from hcl_jax import data as data_lib  # TF only where evaluation needs it

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # Variables as an argument, not a closure: jit can't close over arrays that
  # span other processes' devices.
  encode = jax.jit(lambda variables, images: model.apply(
      variables, images, False, method=lambda module, x, train: module.encoder(x, train)))
  encode_fn = functools.partial(encode, variables)
  num_classes = data_lib.DATASETS[config.dataset].num_classes
  ev = config.eval

  def split(name: str, *, augment: bool = False, epoch: int = 0):
    return data_lib.make_eval_dataset(config, split=name, augment=augment, epoch=epoch,
                                      shuffle=augment).as_numpy_iterator()

  train_features, train_labels = extract_features(encode_fn, split("train"), mesh=mesh)
  test_features, test_labels = extract_features(encode_fn, split("test"), mesh=mesh)
  knn = knn_top1(train_features, train_labels, test_features, test_labels,
                 num_classes=num_classes, k=ev.knn_k, temperature=ev.knn_temperature, mesh=mesh)
  readout_kwargs = dict(num_classes=num_classes, epochs=ev.linear_epochs,
                        learning_rate=ev.linear_learning_rate,
                        weight_decay=ev.linear_weight_decay, seed=config.seed, mesh=mesh)
  protocol = {"readout": ev.readout, "eval_image_size": data_lib.eval_image_size(config),
              "bn_group_size": int(config.model.get("bn_group_size", 0))}
  if ev.readout == "published":
    from hcl_jax import models as models_lib
    from hcl_jax.readout_published import train_linear_readout_published
    out = train_linear_readout_published(
        model, state.params, state.batch_stats,
        lambda epoch: split("train", augment=True, epoch=epoch), lambda: split("test"),
        bn_groups=models_lib.bn_groups_for(config.model, config.batch_size), **readout_kwargs)
    return {"linear_top1": round(100.0 * out["linear_top1"], 2),
            "knn_top1": round(100.0 * knn, 2),
            "linear_tests": [[e, round(100.0 * t, 2)] for e, t in out["tests"]], **protocol}
  if ev.readout == "fast":
    params = train_linear_readout(train_features, train_labels,
                                  batch_size=ev.linear_batch_size, **readout_kwargs)
  else:
    params = train_linear_readout_augmented(
        encode_fn, lambda epoch: split("train", augment=True, epoch=epoch), **readout_kwargs)
  return {"linear_top1": round(100.0 * linear_top1(params, test_features, test_labels), 2),
          "knn_top1": round(100.0 * knn, 2), **protocol}


def main(argv: list[str] | None = None) -> None:
  """``python -m hcl_jax.evaluate --workdir DIR``: see ``hcl_jax.evaluate_cli``."""
  from hcl_jax import evaluate_cli
  evaluate_cli.run(argv)


if __name__ == "__main__":
  main()
