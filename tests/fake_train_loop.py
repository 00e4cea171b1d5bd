"""A tiny stand-in train loop wired like the real one (used by the tests).

State: params + an optimizer-like state, replicated on a 1-D mesh; each step
draws noise from the run's RNG and reads the batch at the current data
position, so a resume that lost the state, the RNG or the data position
would end with different parameters.

  python tests/fake_train_loop.py WORKDIR --total-steps N [--ready-file F]
      [--step-sleep S]

Writes WORKDIR/result.json ({"last_step", "stopped", "start_step"}) and, when
the run reaches N, WORKDIR/final.npz with the final parameters. Exit code 0
on completion and on preemption alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from hcl_jax.run.checkpointing import Checkpointer, rng_from_list, rng_to_list
from hcl_jax.distributed.mesh import make_mesh, replicated
from hcl_jax.run.preemption import PreemptionGuard

KEEP = 2
SAVE_EVERY = 50


def init_state(mesh) -> dict:
  state = {
      "params": {"w": jnp.zeros((4,), jnp.float32),
                 "b": jnp.zeros((), jnp.float32)},
      "opt_state": {"mu": jnp.zeros((4,), jnp.float32),
                    "count": jnp.zeros((), jnp.int32)},
  }
  return jax.device_put(state, replicated(mesh))


@jax.jit
def train_step(state: dict, batch: jax.Array, key: jax.Array) -> dict:
  noise = jax.random.normal(key, (4,))
  mu = 0.9 * state["opt_state"]["mu"] + batch + noise
  return {
      "params": {"w": state["params"]["w"] - 0.01 * mu,
                 "b": state["params"]["b"] - 0.01 * mu.sum()},
      "opt_state": {"mu": mu, "count": state["opt_state"]["count"] + 1},
  }


def batch_at(data_step: int) -> jax.Array:
  return jnp.asarray(np.sin(np.arange(4) + 0.37 * data_step), jnp.float32)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--total-steps", type=int, required=True)
  parser.add_argument("--ready-file", default="")
  parser.add_argument("--step-sleep", type=float, default=0.0)
  args = parser.parse_args(argv)

  mesh = make_mesh()
  ckpt = Checkpointer(os.path.join(args.workdir, "checkpoints"), keep=KEEP,
                      save_every_steps=SAVE_EVERY)
  state = init_state(mesh)
  rng, data_step, start_step = jax.random.key(0), 0, 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    start_step, state, extra = restored
    rng = rng_from_list(extra["rng"])
    data_step = extra["data_step"]

  step, stop = start_step, False
  with PreemptionGuard() as guard:
    for step in range(start_step + 1, args.total_steps + 1):
      rng, key = jax.random.split(rng)
      state = train_step(state, batch_at(data_step), key)
      data_step += 1
      if args.ready_file and step == start_step + 3:
        with open(args.ready_file, "w") as f:
          f.write(str(step))
      stop = guard.should_stop_at(step)
      ckpt.maybe_save(step, state,
                      {"data_step": data_step, "rng": rng_to_list(rng)},
                      force=stop or step == args.total_steps)
      if stop:
        break
      time.sleep(args.step_sleep)
  ckpt.close()  # waits for the asynchronous write

  if not stop:
    np.savez(os.path.join(args.workdir, "final.npz"),
             w=np.asarray(state["params"]["w"]),
             b=np.asarray(state["params"]["b"]),
             mu=np.asarray(state["opt_state"]["mu"]),
             count=np.asarray(state["opt_state"]["count"]))
  with open(os.path.join(args.workdir, "result.json"), "w") as f:
    json.dump({"last_step": step, "stopped": stop, "start_step": start_step},
              f)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
