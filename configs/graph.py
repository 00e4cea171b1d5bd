"""InfoGraph + JSD_hard on one TU dataset, as the published graph/launch.sh runs it.

Selected by argument: ``--config configs/graph.py:dataset=NAME``, NAME one of
``hcl_jax.graph.config.DATASETS`` (the settings: ``hcl_jax.graph.config``).

Commands, one run each (the table of InfoGraph and JSD_hard beta 0, 1, 2, 10
x 10 repeats is
`python -m hcl_jax.reproduce --table TABLE`, TABLE the name in lower case with
_ for -, plus `--data-dir DATA_DIR` for every dataset but MUTAG):
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=MUTAG --workdir workdirs/graph/mutag --config.loss.beta=1.0
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=PTC_MR --workdir workdirs/graph/ptc_mr --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=ENZYMES --workdir workdirs/graph/enzymes --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=IMDB-BINARY --workdir workdirs/graph/imdb_binary --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=IMDB-MULTI --workdir workdirs/graph/imdb_multi --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=DD --workdir workdirs/graph/dd --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=REDDIT-BINARY --workdir workdirs/graph/reddit_binary --config.loss.beta=1.0 --config.data_dir=DATA_DIR
  python -m hcl_jax.graph.main --config configs/graph.py:dataset=PROTEINS --workdir workdirs/graph/proteins --config.loss.beta=1.0 --config.data_dir=DATA_DIR

MUTAG loads from the installed grakel wheel (no data_dir). The others need
the TU files: unzip https://www.chrsmrrs.com/graphkerneldatasets/NAME.zip
into DATA_DIR.

Expected time: MUTAG 7-38 s per run (median 13 s; 400 steps, SVC at epochs
0, 100, 200) on one core of a 2-core AMD EPYC shared with other jobs; the
table of 50 runs took 12.4 min (docs/results/mutag.md). The other datasets: not
measured here (the files are not on this machine).
"""

from hcl_jax.config import registry
from hcl_jax.graph.config import DATASETS, base_config


def get_config(arg: str | None = None):
  """The published settings for ``arg`` = ``"dataset=NAME"``."""
  chosen = registry.parse_config_arg("configs/graph.py", arg, {"dataset": DATASETS})
  return base_config(chosen["dataset"])
