"""The device mesh and the shardings every part of hcl_jax agrees on.

One mesh axis, ``data``: the global batch is split over it, parameters and
optimizer state are replicated over it. On a pod slice the mesh spans every
device of every host (``jax.devices()`` is global once the multi-process
runtime is initialised).

The axis is Auto (GSPMD places the collectives), not the Explicit axes that
``jax.make_mesh`` gives by default: the Flax models reshape sharded batch
dimensions (views, BatchNorm groups), which Explicit axes reject without an
``out_sharding`` on every such reshape. ``make_train_step`` and the losses
accept a default ``jax.make_mesh`` mesh too (tests/test_train_step.py,
tests/test_losses_sharding.py).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state)."""
  return NamedSharding(mesh, P())
