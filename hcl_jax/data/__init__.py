"""Input pipelines for hcl_jax (TFDS + tf.data on the host, jax.Arrays out).

- ``augment``: the paper's augmentations as stateless tf functions.
- ``digits``: the embedded, offline ``digits`` TFDS dataset (scikit-learn's).
- ``sources``: the registry's datasets (``hcl_jax.config.registry.DATASETS``) -> TFDS
  builders/splits; fail fast when missing.
- ``pipeline``: ``make_pretrain_dataset`` (two views, resumable),
  ``pretrain_steps_per_epoch``, ``make_eval_dataset`` (readout / kNN).
- ``global_arrays``: ``global_batches`` (sharded global arrays, prefetched).
"""

from hcl_jax.data.global_arrays import global_batches, to_global
from hcl_jax.data.pipeline import (PretrainData, eval_image_size, make_eval_dataset,
                                   make_pretrain_dataset, pretrain_steps_per_epoch)
from hcl_jax.data.sources import DatasetNotPreparedError, load_builder
from hcl_jax.config.registry import DATASETS

__all__ = [
    "DATASETS", "DatasetNotPreparedError", "PretrainData", "eval_image_size", "global_batches",
    "load_builder", "make_eval_dataset", "make_pretrain_dataset", "pretrain_steps_per_epoch",
    "to_global",
]
