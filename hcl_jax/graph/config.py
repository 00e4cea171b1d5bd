"""The published InfoGraph + JSD_hard settings (HCL graph/launch.sh, deepinfomax.py).

``configs/graph.py:dataset=NAME`` is ``base_config(NAME)``: ``configs/base.py``'s
``graph_config()`` with that dataset.
"""

from __future__ import annotations

import ml_collections

# launch.sh: every dataset of the paper's graph experiments.
DATASETS = ("MUTAG", "PTC_MR", "ENZYMES", "IMDB-BINARY", "IMDB-MULTI", "DD",
            "REDDIT-BINARY", "PROTEINS")
BETAS = (0.0, 1.0, 2.0, 10.0)   # deepinfomax.py
REPEATS = 10                    # launch.sh --repeats 10


def base_config(dataset: str) -> ml_collections.ConfigDict:
  """``configs/base.py``'s ``graph_config()`` (every key, its default) for ``dataset``."""
  from hcl_jax.config import loading

  if dataset not in DATASETS:
    raise ValueError(f"dataset={dataset!r}: expected one of {DATASETS}.")
  config = loading.base_config("graph")
  config.dataset = dataset
  return config
