"""Weighted kNN monitor of a frozen encoder's features.

``knn_scores`` / ``knn_predict`` / ``knn_top1`` follow ``test()`` in the
published ``main.py`` of Robinson et al. (ICLR 2021) and Chuang et al.
(NeurIPS 2020), itself from InstDisc / SimCLR-pytorch. Features are
L2-normalised; each test row takes its ``k = 200`` most cosine-similar train
rows, weights them by ``exp(sim / t)`` with ``t = 0.5``, sums the weights per
class and predicts the argmax.

With a ``mesh``, chunks of test rows are split over
``hcl_jax.distributed.mesh.DATA_AXIS`` and the train feature bank is replicated (see
:mod:`hcl_jax.evaluation.features`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hcl_jax.config import values as checks
from hcl_jax.distributed import compile_sync
from hcl_jax.distributed import multihost
from hcl_jax.evaluation.features import (PRECISION, check_features, check_labels, num_devices, pad_rows,
                              round_up)
from hcl_jax.losses import l2_normalize
from hcl_jax.distributed.mesh import batch_sharding, replicated

Array = jax.Array

__all__ = ["knn_scores", "knn_predict", "knn_top1"]


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
  similarity = jnp.matmul(test_features, train_features.T, precision=PRECISION)  # [B, N]
  top_similarity, top_index = jax.lax.top_k(similarity, k)  # [B, k]
  # exp(s / t) divided by exp(s_max / t), the nearest neighbour's weight: a
  # positive per-row factor, so the argmax is the reference's, but float32
  # cannot overflow at small temperatures.
  weights = jnp.exp((top_similarity - top_similarity[:, :1]) / temperature)
  one_hot = jax.nn.one_hot(train_labels[top_index], num_classes, dtype=jnp.float32)
  return jnp.einsum("bk,bkc->bc", weights, one_hot, precision=PRECISION)


@functools.lru_cache(maxsize=None)
def _knn_chunk_fn(k: int, num_classes: int, mesh: Mesh | None) -> Callable[..., Array]:
  fn = functools.partial(_knn_chunk_scores, k=k, num_classes=num_classes)
  if mesh is None:
    return jax.jit(fn)
  rep, rows = replicated(mesh), batch_sharding(mesh)
  return compile_sync.synced_first_call(
      jax.jit(fn, in_shardings=(rep, rep, rows, rep), out_shardings=rep), "knn")


def _check_knn_inputs(train_features: Any, train_labels: Any, test_features: Any,
                      num_classes: Any, k: Any, temperature: Any,
                      batch_size: Any) -> tuple[Any, np.ndarray, Any, int, int, float, int]:
  num_classes = checks.int_at_least("num_classes", num_classes, 1)
  k = checks.int_at_least("k", k, 1)
  temperature = checks.positive_number("temperature", temperature)
  batch_size = checks.int_at_least("batch_size", batch_size, 1)
  train_features = check_features("train_features", train_features)
  test_features = check_features("test_features", test_features)
  if train_features.shape[0] < 1:
    raise ValueError("train_features must have at least one row; got shape "
                     f"{tuple(train_features.shape)}.")
  if test_features.shape[1] != train_features.shape[1]:
    raise ValueError(
        "test_features and train_features must have the same feature dim; got "
        f"{test_features.shape[1]} and {train_features.shape[1]}.")
  train_labels = check_labels("train_labels", train_labels, num_rows=train_features.shape[0],
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
  chunk = round_up(min(batch_size, num_test), num_devices(mesh))

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
    out = fn(bank, bank_labels, put_rows(pad_rows(rows, chunk)), temperature_arr)
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
  test_features = check_features("test_features", test_features)
  num_classes = checks.int_at_least("num_classes", num_classes, 1)
  test_labels = check_labels("test_labels", test_labels, num_rows=test_features.shape[0],
                              rows_name="test_features", num_classes=num_classes)
  if test_labels.size == 0:
    raise ValueError("knn_top1 needs at least one test row; got 0.")
  predictions = knn_predict(train_features, train_labels, test_features, num_classes=num_classes,
                            k=k, temperature=temperature, batch_size=batch_size, mesh=mesh)
  return float(np.mean(predictions == test_labels))
