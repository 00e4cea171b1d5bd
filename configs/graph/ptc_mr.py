"""InfoGraph + JSD_hard on PTC_MR, as the published graph/launch.sh runs it.

Command (one run; the table of beta 0, 1, 2, 10 x 10 repeats is
`python -m hcl_jax.reproduce --table ptc_mr --data-dir DATA_DIR`):
  python -m hcl_jax.graph.main --config configs/graph/ptc_mr.py \
      --workdir workdirs/graph/ptc_mr --config.loss.beta=1.0 \
      --config.data_dir=DATA_DIR

Needs the TU files: unzip https://www.chrsmrrs.com/graphkerneldatasets/PTC_MR.zip into DATA_DIR.
Expected time: not measured here (the files are not on this machine); MUTAG,
188 graphs, takes 15-60 s per run on 2 CPU cores (configs/graph/mutag.py).
"""

from hcl_jax.graph.config import base_config


def get_config():
  return base_config("PTC_MR")
