"""Evaluation of a trained encoder: the kNN and a linear readout, as published.

``evaluate_encoder`` is what ``hcl_jax.main`` (after training) and
``python -m hcl_jax.evaluate --workdir DIR`` (a run's latest checkpoint,
``hcl_jax.evaluate``) call. It builds the frozen encoder and the datasets
from the run config and hands them to one evaluator per concern:

* :mod:`hcl_jax.evaluation.features`: the encoder's features of a split
  (``extract_features``), shared by the others;
* :mod:`hcl_jax.evaluation.knn`: the weighted kNN monitor;
* :mod:`hcl_jax.evaluation.linear_readout`: the fast (cached features) and the
  augmented readouts;
* :mod:`hcl_jax.evaluation.readout_published`: image/linear.py's readout, the network in
  train mode.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import Mesh

from hcl_jax.distributed import compile_sync
from hcl_jax import models as models_lib
from hcl_jax.config import registry
from hcl_jax.evaluation.features import extract_features
from hcl_jax.evaluation.knn import knn_top1
from hcl_jax.evaluation.linear_readout import linear_top1, train_linear_readout, train_linear_readout_augmented
from hcl_jax.evaluation.readout_published import train_linear_readout_published

__all__ = ["evaluate_encoder"]


def evaluate_encoder(config: Any, model: Any, state: Any, mesh: Mesh | None) -> dict[str, float]:
  """Linear readout and kNN top-1 (in %) of a model's frozen encoder.

  Follows the published code: the kNN (``config.eval.knn_k``,
  ``knn_temperature``) uses the L2-normalised backbone features of the
  unaugmented train split as its bank; the readout trains on the
  un-normalised backbone features, on cached unaugmented features
  (``config.eval.readout == "fast"``), on features of freshly augmented
  train images every epoch with BatchNorm in inference mode (``"augmented"``),
  or as image/linear.py does (``"published"``: augmented images, the network
  in train mode, tested every 5 epochs).
  Unaugmented images (kNN bank and test, linear test) have side
  ``config.eval.image_size`` (STL-10: 96, as published).

  Returns {"linear_top1", "knn_top1" (%), "readout", "eval_image_size",
  "bn_group_size"} (+ "linear_tests": [[epoch, top-1 %], ...] for
  "published"): every result says which protocol made it.

  Args:
    config: the run config (dataset, data_dir, image_size, eval.*).
    model: a :class:`hcl_jax.models.ContrastiveModel`.
    state: anything with ``params`` and ``batch_stats`` (a TrainState).
    mesh: batches are split over its data axis; None for one device.
  """
  from hcl_jax import data as data_lib  # TF only where evaluation needs it

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # Variables as an argument, not a closure: jit can't close over arrays that
  # span other processes' devices.
  encode = compile_sync.synced_first_call(jax.jit(lambda variables, images: model.apply(
      variables, images, False, method=lambda module, x, train: module.encoder(x, train))),
      "encode")
  encode_fn = functools.partial(encode, variables)
  num_classes = registry.DATASETS[config.dataset].num_classes
  ev = config.eval

  def split(name: str, *, augment: bool = False, epoch: int = 0):
    return data_lib.make_eval_dataset(config, split=name, augment=augment, epoch=epoch,
                                      shuffle=augment).as_numpy_iterator()

  train_features, train_labels = extract_features(encode_fn, split("train"), mesh=mesh)
  test_features, test_labels = extract_features(encode_fn, split("test"), mesh=mesh)
  knn = knn_top1(train_features, train_labels, test_features, test_labels,
                 num_classes=num_classes, k=ev.knn_k, temperature=ev.knn_temperature, mesh=mesh)
  readout_kwargs = dict(num_classes=num_classes, epochs=ev.linear_epochs,
                        learning_rate=ev.linear_learning_rate,
                        weight_decay=ev.linear_weight_decay, seed=config.seed, mesh=mesh)
  protocol = {"readout": ev.readout, "eval_image_size": data_lib.eval_image_size(config),
              "bn_group_size": config.model.bn_group_size}
  if ev.readout == "published":
    out = train_linear_readout_published(
        model, state.params, state.batch_stats,
        lambda epoch: split("train", augment=True, epoch=epoch), lambda: split("test"),
        bn_groups=models_lib.bn_groups_for(config.model, config.batch_size), **readout_kwargs)
    return {"linear_top1": round(100.0 * out["linear_top1"], 2),
            "knn_top1": round(100.0 * knn, 2),
            "linear_tests": [[e, round(100.0 * t, 2)] for e, t in out["tests"]], **protocol}
  if ev.readout == "fast":
    params = train_linear_readout(train_features, train_labels,
                                  batch_size=ev.linear_batch_size, **readout_kwargs)
  else:
    params = train_linear_readout_augmented(
        encode_fn, lambda epoch: split("train", augment=True, epoch=epoch), **readout_kwargs)
  return {"linear_top1": round(100.0 * linear_top1(params, test_features, test_labels), 2),
          "knn_top1": round(100.0 * knn, 2), **protocol}

