"""Host arrays <-> global jax.Arrays for evaluation, on one process or many.

With several processes (a pod slice), a mesh spans devices this process can't
address. ``jax.device_put`` of a host array onto such a sharding only works if
the array is identical on every process (JAX asserts it), and each process's
evaluation data are its own part of the split. These helpers say which case a
placement is:

* ``put_rows``: each process's *own* rows -> one global array sharded over
  ``DATA_AXIS`` (rows of process 0, then process 1, ...).
* ``put_replicated`` / ``put_identical_rows``: values every process holds
  in full (a feature bank, readout parameters) -> replicated or row-sharded.
* ``local_rows``: a row-sharded global array -> this process's rows, on host.
* ``allgather_rows``: host arrays of each process's rows (any count per
  process) -> the concatenation over processes, the same on every process.

On one process each is the plain ``jax.device_put`` / ``np.asarray``.
Process p reads the p-th contiguous part of a split (``tfds.split_for_jax_process``),
so ``allgather_rows`` of the per-process features is the split in its own
order, whatever the number of processes: 2 processes x 4 devices build the
same kNN bank and readout training set as 1 process x 8.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hcl_jax.distributed.mesh import batch_sharding, replicated

__all__ = ["is_multiprocess", "put_rows", "put_replicated", "put_identical_rows",
           "local_rows", "allgather_rows", "local_device_count"]


def is_multiprocess(mesh: Mesh | None) -> bool:
  """True when ``mesh`` has devices of more than one process."""
  return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def local_device_count(mesh: Mesh) -> int:
  """Devices of ``mesh`` that belong to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def put_rows(tree: Any, mesh: Mesh) -> Any:
  """This process's rows (leading axis a multiple of ``local_device_count``)
  -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  if not is_multiprocess(mesh):
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def _from_full_host_value(value: Any, sharding) -> jax.Array:
  host = np.asarray(jax.device_get(value))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Values identical on every process -> arrays replicated over ``mesh``."""
  sharding = replicated(mesh)
  if not is_multiprocess(mesh):
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _from_full_host_value(x, sharding), tree)


def put_identical_rows(tree: Any, mesh: Mesh) -> Any:
  """Full arrays identical on every process -> row-sharded global arrays."""
  sharding = batch_sharding(mesh)
  if not is_multiprocess(mesh):
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _from_full_host_value(x, sharding), tree)


def local_rows(array: Any) -> np.ndarray:
  """A row-sharded (or any) array -> this process's rows, in order, on host."""
  if not isinstance(array, jax.Array) or array.is_fully_addressable:
    return np.asarray(array)
  shards = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    shards.setdefault(start, shard)  # replicas over other mesh axes: keep one
  return np.concatenate([np.asarray(shards[s].data) for s in sorted(shards)], axis=0)


def allgather_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """Each process's host rows -> all processes' rows, in process order.

  The arrays of one call share their row count on a process; counts may
  differ between processes. One process: returned as they are.
  """
  if jax.process_count() == 1:
    return tuple(np.asarray(a) for a in arrays)
  from jax.experimental import multihost_utils

  from hcl_jax import distributed
  # The gather is a collective: processes that reach it far apart (one still
  # compiling its encoder) would time out in it. Line them up first.
  distributed.wait_for_all_processes("allgather_rows")
  rows = int(arrays[0].shape[0])
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([rows], np.int64))).reshape(-1)
  most = int(counts.max())
  gathered = []
  for array in arrays:
    array = np.asarray(array)
    padded = np.zeros((most,) + array.shape[1:], array.dtype)
    padded[:rows] = array
    every = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
    gathered.append(np.concatenate([every[p, :counts[p]] for p in range(len(counts))], axis=0))
  return tuple(gathered)
