"""InfoGraph + JSD_hard on MUTAG, as the published graph/launch.sh runs it.

Command (one run; the table of beta 0, 1, 2, 10 x 10 repeats is
`python -m hcl_jax.reproduce --table mutag`):
  python -m hcl_jax.graph.main --config configs/graph/mutag.py \
      --workdir workdirs/graph/mutag --config.loss.beta=1.0

MUTAG loads from the installed grakel wheel (no data_dir).
EXPECTED_TIME
"""

from hcl_jax.graph.config import base_config


def get_config():
  return base_config("MUTAG")
