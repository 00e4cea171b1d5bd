"""Host-local numpy batches -> global jax.Arrays on the mesh, prefetched.

``global_batches(dataset, mesh)`` turns each host-local batch (a dict of
arrays with leading axis b = global batch / process_count) into global
jax.Arrays of leading axis B, sharded over the mesh's data axis
(``jax.make_array_from_process_local_data`` with
``hcl_jax.distributed.mesh.batch_sharding(mesh)``). A background thread keeps ``prefetch``
batches on the devices ahead of the training step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import jax
import numpy as np

from hcl_jax.distributed.mesh import batch_sharding

_END = object()


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """One host-local batch -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % max(local_devices, 1):
      raise ValueError(f"batch[{name!r}].shape={value.shape}: the leading axis must be a "
                       f"multiple of this process's {local_devices} mesh devices.")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def global_batches(dataset: Iterable, mesh: jax.sharding.Mesh, *,
                   prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Iterate ``dataset`` (tf.data.Dataset or iterable of dicts) as global arrays.

  Args:
    dataset: host-local batches, e.g. ``make_pretrain_dataset(...).dataset``.
    mesh: the device mesh (hcl_jax.distributed.mesh.make_mesh()).
    prefetch: batches converted and placed on devices ahead of the consumer.

  Yields:
    dicts of jax.Array, leading axis = local batch * process_count.
  """
  if prefetch < 1:
    raise ValueError(f"prefetch={prefetch!r}: must be >= 1.")
  source = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
  ready: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for batch in source:
        if not put(to_global(batch, mesh)):
          return
      put(_END)
    except BaseException as error:  # re-raised in the consumer
      put(error)

  thread = threading.Thread(target=produce, daemon=True, name="global_batches")
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is _END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    # Closed or dropped by the consumer: end the producer now, not in the
    # interpreter's teardown, where a thread inside C++ aborts the process
    # (see run_errors.exit_now). It notices within one put timeout, or once
    # its current batch is read.
    stop.set()
    thread.join(timeout=10)
