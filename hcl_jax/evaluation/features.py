"""A frozen encoder's features, and what every evaluator needs to take them in.

``extract_features`` runs an encoder over a dataset's batches; the kNN
(:mod:`hcl_jax.evaluation.knn`) and the linear readouts (:mod:`hcl_jax.evaluation.linear_readout`,
:mod:`hcl_jax.evaluation.readout_published`) consume its arrays, checked by
``check_features`` / ``check_labels``, and place their batches on a mesh with
``place_batch``.

Sharding: with a ``mesh``, every batch is split over
``hcl_jax.distributed.mesh.DATA_AXIS``. Batches whose size is not a multiple of the
device count are padded with masked rows, so a mesh gives the same result as
one device up to float summation order. Results come back replicated (or,
for features, gathered on the host), so reading them works on every process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hcl_jax.distributed import multihost
from hcl_jax.distributed.mesh import DATA_AXIS

Array = jax.Array

# Cosine similarities decide which neighbours the kNN keeps, and readout
# logits are small dot products: TPU's default bf16 matmul passes would
# perturb both, so the evaluators ask for full float32 (the cost is
# negligible next to the encoder).
PRECISION = jax.lax.Precision.HIGHEST


def check_features(name: str, features: Any) -> np.ndarray | Array:
  """``features`` as an array of shape [rows, F >= 1] and a floating dtype."""
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


def check_labels(name: str, labels: Any, *, num_rows: int, rows_name: str,
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


def check_batch_labels(labels: np.ndarray, num_classes: int) -> None:
  """A training batch's (unmasked) labels all lie in [0, num_classes)."""
  check_labels("batch labels", labels, num_rows=labels.shape[0], rows_name="the batch",
               num_classes=num_classes)


def check_encoded(features: Any, num_images: int) -> Any:
  """``encode_fn``'s output for ``num_images`` images, if it is [num_images, F]."""
  if len(features.shape) != 2 or features.shape[0] != num_images:
    raise ValueError(f"encode_fn must map [b, ...] images to [b, F] features; got shape "
                     f"{tuple(features.shape)} for {num_images} images.")
  return features


def num_devices(mesh: Mesh | None) -> int:
  """Devices along the data axis (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[DATA_AXIS])


def round_up(value: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is >= ``value``."""
  return -(-value // multiple) * multiple


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """Zero-pads the leading axis of a host array to ``rows``."""
  if array.shape[0] == rows:
    return array
  pad = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
  return np.pad(array, pad)


def to_host_batch(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def place_batch(images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                mesh: Mesh | None) -> tuple[Any, Any, Any]:
  """Pads a batch with masked rows to a multiple of the device count and shards it.

  With several processes, each one's batch holds its own rows: the global batch
  is their concatenation (each padded to a multiple of its local devices).
  """
  if mesh is None:
    return images, labels, mask
  devices = (multihost.local_device_count(mesh) if multihost.is_multiprocess(mesh)
             else num_devices(mesh))
  rows = round_up(images.shape[0], devices)
  images, labels, mask = (pad_rows(a, rows) for a in (images, labels, mask))
  return multihost.put_rows((images, labels, mask), mesh)


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
    images, labels, mask = to_host_batch(batch)
    num_rows = images.shape[0]
    placed = place_batch(images, labels, mask, mesh)
    features = check_encoded(encode_fn(placed[0]), placed[0].shape[0])
    features = multihost.local_rows(features).astype(np.float32)[:num_rows]
    all_features.append(features[mask])
    all_labels.append(labels[mask])
  if not all_features:
    raise ValueError("batches yielded no batch.")
  return multihost.allgather_rows(np.concatenate(all_features, axis=0),
                                  np.concatenate(all_labels, axis=0))
