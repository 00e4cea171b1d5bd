"""Command line of one graph run (see hcl_jax.graph.train).

  python -m hcl_jax.graph.main --config configs/graph.py:dataset=MUTAG \
      --workdir workdirs/graph/mutag --config.loss.beta=2.0

The --config path is found as ``hcl_jax.config.check.parse_flags`` finds it
(the working directory, then the shipped configs), and a bad one, or a bad
``:dataset=``, is one line.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hcl_jax.config import check as config_check

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/graph.py:dataset=NAME")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from hcl_jax.graph import train
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
