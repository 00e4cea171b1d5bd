"""One process of the two-process runtime test (run by test_distributed.py).

It runs a psum, the HCL loss and a few train steps of a tiny net over the
global mesh.

Environment (set by the test): JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID, JAX_PLATFORMS=cpu and XLA_FLAGS with
--xla_force_host_platform_device_count. Prints one JSON line starting with
RESULT: what this process saw of the global computation.
"""

import faulthandler
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import support  # tests/ is on sys.path: pytest's, or this script's own folder
from hcl_jax import distributed
from hcl_jax import losses
from hcl_jax.distributed import mesh as mesh_lib

GLOBAL_BATCH, DIM = 8, 16

# The test dumps every process's stacks with SIGUSR1 when the run passes its bound.
faulthandler.register(signal.SIGUSR1, all_threads=True)


def global_inputs() -> tuple[np.ndarray, np.ndarray]:
  """The full batch, identical in every process (and in the test)."""
  rng = np.random.default_rng(0)
  z1 = rng.standard_normal((GLOBAL_BATCH, DIM)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.standard_normal((GLOBAL_BATCH, DIM))).astype(np.float32)
  return z1, z2


TRAIN_STEPS = 3


def tiny_config():
  """configs/digits.py on 8x8 images, batch GLOBAL_BATCH (what the train step reads)."""
  config = support.digits_config()
  config.image_size = 8
  config.batch_size = GLOBAL_BATCH
  return config


def global_views() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1)
  shape = (GLOBAL_BATCH, 8, 8, 3)
  return {"view1": rng.standard_normal(shape).astype(np.float32),
          "view2": rng.standard_normal(shape).astype(np.float32)}


def train_steps(mesh, rows: slice) -> dict:
  """TRAIN_STEPS steps of the tiny net on one global batch fed by rows.

  Returns the losses and the final parameters' leaves (host numpy), which
  every process can read since the state is replicated.
  """
  from hcl_jax.train import optim
  from hcl_jax.train import step as train_step_lib

  config = tiny_config()
  # Not the config's ResNet-18: the two processes and the test each compile
  # the step, and support.tiny_model compiles in 40% of the time (state and
  # step: 9 s against 23 s for the 1/16-width ResNet-18, measured).
  model = support.tiny_model()
  state = train_step_lib.create_train_state(model, optim.make_optimizer(config, 10),
                                            jax.random.key(0), mesh, (8, 8, 3))
  step = train_step_lib.make_train_step(config, mesh, steps_per_epoch=10, model=model)
  sharding = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.make_array_from_process_local_data(sharding, v[rows], v.shape)
           for k, v in global_views().items()}
  step_losses = []
  for _ in range(TRAIN_STEPS):
    state, metrics = step(state, batch)
    step_losses.append(float(metrics["loss"]))
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]
  return {"losses": step_losses, "params": leaves}


def main() -> None:
  # First, before anything touches a backend (importing jax does not).
  info = distributed.initialize_distributed(initialization_timeout_s=60)
  mesh = mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  pid, count = jax.process_index(), jax.process_count()
  rows = slice(pid * GLOBAL_BATCH // count, (pid + 1) * GLOBAL_BATCH // count)

  # Each process contributes only its own rows: a disjoint shard of the batch.
  z1, z2 = global_inputs()
  z1_global = jax.make_array_from_process_local_data(
      sharding, z1[rows], (GLOBAL_BATCH, DIM))
  z2_global = jax.make_array_from_process_local_data(
      sharding, z2[rows], (GLOBAL_BATCH, DIM))
  ids = np.arange(GLOBAL_BATCH, dtype=np.float32)
  ids_global = jax.make_array_from_process_local_data(
      sharding, ids[rows], (GLOBAL_BATCH,))

  # An explicit cross-process collective: every device sums its rows, psum
  # adds the sums of all devices of all processes.
  psum = jax.jit(jax.shard_map(
      lambda x: jax.lax.psum(jnp.sum(x), mesh_lib.DATA_AXIS),
      mesh=mesh, in_specs=P(mesh_lib.DATA_AXIS), out_specs=P()))(ids_global)

  loss_fn = jax.jit(lambda a, b: losses.hcl_loss(
      a, b, temperature=0.5, tau_plus=0.1, beta=1.0))
  loss = loss_fn(z1_global, z2_global)

  trained = train_steps(mesh, rows)
  result = {
      "train_losses": trained["losses"],
      "mode": info.mode,
      "process_index": pid,
      "info_process_index": info.process_index,
      "info_global_device_count": info.global_device_count,
      "process_count": count,
      "local_device_count": jax.local_device_count(),
      "device_count": jax.device_count(),
      "mesh_size": int(mesh.devices.size),
      "local_rows": [int(v) for v in ids[rows]],
      "psum": float(psum),
      "loss": float(loss),
  }
  # The parameters (tens of thousands of floats) go to a file: through the
  # stdout pipe they would block this process until the test reads it.
  np.savez(os.path.join(os.environ["WORKER_OUT_DIR"], f"params_{pid}.npz"), *trained["params"])
  print("RESULT:" + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
