"""One process of test_checkpoint_agreement: two processes, one checkpoint
directory, and a step that only process 1 finds damaged.

Process 1's read of step 2 is made to fail its CRC-32 check (what a host
with a stale cache or a bad local copy sees); process 0 reads it intact. The
processes must still restore the same step (the previous one), set step 2
aside once, and meet the same barriers.
"""

import faulthandler
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from hcl_jax.run import checkpointing
from hcl_jax import distributed
from hcl_jax.distributed import mesh as mesh_lib

# The test dumps every process's stacks with SIGUSR1 when the run passes its bound.
faulthandler.register(signal.SIGUSR1, all_threads=True)


def main() -> None:
  distributed.initialize_distributed(initialization_timeout_s=60)
  mesh = mesh_lib.make_mesh()

  def state(step):
    return {"w": jax.device_put(jnp.arange(100.0) * step, mesh_lib.replicated(mesh))}

  directory = os.environ["CKPT_DIR"]
  with checkpointing.Checkpointer(directory, keep=3, save_every_steps=1) as ckpt:
    for step in (1, 2):
      ckpt.maybe_save(step, state(step), {"data_step": step})
  if jax.process_index() == 1:
    real = checkpointing.checksum_mismatches

    def damaged_here(saved, restored):
      if float(np.asarray(restored["w"].addressable_data(0))[1]) == 2.0:  # step 2's values
        return ["['w']"]
      return real(saved, restored)

    checkpointing.checksum_mismatches = damaged_here
  distributed.wait_for_all_processes("saved")
  with checkpointing.Checkpointer(directory, keep=3, save_every_steps=1) as ckpt:
    restored = ckpt.restore_latest(state(0))
    steps = ckpt.all_steps()
  result = {"process_index": jax.process_index(), "step": restored.step,
            "w1": float(np.asarray(restored.state["w"].addressable_data(0))[1]),
            "extra": restored.extra, "all_steps": steps}
  print("RESULT:" + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
