"""InfoGraph + JSD_hard on MUTAG, as the published graph/launch.sh runs it.

Command (one run; the table of beta 0, 1, 2, 10 x 10 repeats is
`python -m hcl_jax.reproduce --table mutag`):
  python -m hcl_jax.graph.main --config configs/graph/mutag.py \
      --workdir workdirs/graph/mutag --config.loss.beta=1.0

MUTAG loads from the installed grakel wheel (no data_dir).
Expected time: 23-60 s per run (median 30 s; 400 steps, SVC at epochs 0, 100,
200) on a 2-core AMD EPYC shared with other jobs (load 15-25); the table of
40 runs took 22 min (docs/results/mutag.md).
"""

from hcl_jax.graph.config import base_config


def get_config():
  return base_config("MUTAG")
