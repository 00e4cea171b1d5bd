"""The published linear readout protocol (joshr17/HCL, image/linear.py).

``config.eval.readout = "published"``. What the published script does, and
what this module does the same way:

* One ``nn.Linear(F, classes)`` with bias on the frozen encoder's
  un-normalised feature, Adam lr 1e-3 with weight decay 1e-6 (L2 in the
  gradient), cross-entropy, batch 512, 100 epochs, shuffled each epoch, the
  last partial batch kept (reused from :mod:`hcl_jax.evaluation.linear_readout`).
* Training images go through the augmented ``train_transform`` (crop, flip,
  jitter, grayscale, blur: ``make_eval_dataset(..., augment=True)``).
* The network is in **train mode** while the linear layer trains
  (``net.train()`` in ``train_val``): every BatchNorm normalises with the
  statistics of the current batch and its running averages keep moving,
  although no encoder weight is trained. The published run used
  ``nn.DataParallel`` on 2 GPUs, so each BatchNorm saw one chunk of the
  batch: ``bn_groups`` chunks here (``models.bn_groups_for``).
* Every ``test_every`` = 5 epochs the test set (``test_transform``: no
  augmentation, STL-10 at 96x96) is classified with the network in eval mode
  (the running averages as they are at that point); the number reported is
  the last of these tests. (If ``epochs`` is not a multiple of 5 the last
  epoch is tested too, so that a number exists.)

Only the kNN, computed before the readout from the pre-trained running
averages, is unaffected by the readout's BatchNorm updates; the readout
never writes back into the training state.

Rows with a false mask (the padding of a final batch) are dropped before the
encoder, since in train mode they would enter the batch statistics; with a
mesh, the last batch is also cut to a multiple of the device count (at most
devices - 1 images of one batch per epoch; each epoch shuffles anew).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from hcl_jax.config import values as checks
from hcl_jax.distributed import compile_sync
from hcl_jax.evaluation import linear_readout
from hcl_jax.distributed import multihost
from hcl_jax.evaluation.features import (check_batch_labels, extract_features, num_devices, place_batch,
                              to_host_batch)
from hcl_jax.distributed.mesh import replicated

TEST_EVERY = 5   # image/linear.py: `if epoch % 5 == 0: test`


def _encoder(module, images, train: bool, bn_groups: int):
  return module.encoder(images, train, 1, bn_groups)


def train_linear_readout_published(
    model: Any, params: Any, batch_stats: Any,
    make_train_iterator: Callable[[int], Iterable[Mapping[str, Any]]],
    make_test_iterator: Callable[[], Iterable[Mapping[str, Any]]], *,
    num_classes: int, epochs: int, bn_groups: int = 1, learning_rate: float = 1e-3,
    weight_decay: float = 1e-6, seed: int = 0, test_every: int = TEST_EVERY,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None) -> dict[str, Any]:
  """Trains the readout as image/linear.py does; returns its last test result.

  Args:
    model: a :class:`hcl_jax.models.ContrastiveModel` (its ``encoder`` is used).
    params, batch_stats: the pre-trained variables (not modified; the
      readout's moving running averages live in a copy).
    make_train_iterator: ``make_train_iterator(epoch)`` yields the epoch's
      shuffled, augmented batches {"image", "label", optional "mask"}.
    make_test_iterator: ``make_test_iterator()`` yields the unaugmented test
      batches.
    num_classes, epochs, learning_rate, weight_decay, seed: as in
      :func:`hcl_jax.evaluation.linear_readout.train_linear_readout` (epochs >= 1).
    bn_groups: ghost-BN chunks of every training batch (DataParallel GPUs).
    test_every: test every this many epochs (and after the last one).
    mesh: batches split over its data axis; variables replicated.
    on_epoch_end: called as ``on_epoch_end(epoch, mean_minibatch_loss)``.

  Returns:
    {"linear_top1": test top-1 in [0, 1] of the last test, "tests": [[epoch
    (1-based), top-1], ...] every test in order, "batch_stats": the running
    averages at the end of the readout, "params": the linear layer}.
  """
  num_classes, epochs, learning_rate, weight_decay, seed = linear_readout.check_hyperparameters(
      num_classes, epochs, learning_rate, weight_decay, seed)
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1 for the published readout; got {epochs}.")
  test_every = checks.int_at_least("test_every", test_every, 1)
  bn_groups = checks.int_at_least("bn_groups", bn_groups, 1)
  optimizer = linear_readout.readout_optimizer(learning_rate, weight_decay)

  # The encoder's parameters are arguments, not closed-over constants: XLA
  # would otherwise embed ResNet-50's 94 MB of weights in the program.
  def step(lin_params, opt_state, stats, images, labels, mask, params):
    features, updates = model.apply(
        {"params": params, "batch_stats": stats}, images, True, bn_groups,
        method=_encoder, mutable=["batch_stats"])
    features = jax.lax.stop_gradient(features)
    lin_params, opt_state, loss = linear_readout.update(optimizer, lin_params, opt_state,
                                                        features, labels, mask)
    return lin_params, opt_state, updates["batch_stats"], loss

  def encode_eval(params, stats, images):
    return model.apply({"params": params, "batch_stats": stats}, images, False, 1,
                       method=_encoder)

  if mesh is None:
    step_fn = jax.jit(step, donate_argnums=(0, 1, 2))
  else:
    rep = replicated(mesh)
    step_fn = compile_sync.synced_first_call(
        jax.jit(step, out_shardings=(rep, rep, rep, rep), donate_argnums=(0, 1, 2)),
        "published_readout_step")
  encode_fn = jax.jit(encode_eval)
  devices = num_devices(mesh)

  # A copy: donation must not consume the caller's batch_stats.
  stats = jax.tree.map(lambda a: a.copy(), batch_stats)
  lin_params = opt_state = None
  tests: list[list[float]] = []
  for epoch in range(epochs):
    losses = []
    for batch in make_train_iterator(epoch):
      images, labels, mask = to_host_batch(batch)
      images, labels = images[mask], labels[mask]
      rows = images.shape[0] - images.shape[0] % devices
      if rows == 0:
        continue
      images, labels = images[:rows], labels[:rows]
      check_batch_labels(labels, num_classes)
      images, labels, mask = place_batch(images, labels, np.ones(rows, bool), mesh)
      if lin_params is None:
        feature_dim = jax.eval_shape(encode_eval, params, stats, images).shape[1]
        lin_params = linear_readout.init_linear_readout(jax.random.PRNGKey(seed), feature_dim,
                                                        num_classes)
        opt_state = optimizer.init(lin_params)
        if mesh is not None:
          # Not jax.device_put: with several processes it runs a hidden
          # cross-process equality check (a collective) at this point.
          lin_params, opt_state = multihost.put_replicated((lin_params, opt_state), mesh)
      lin_params, opt_state, stats, loss = step_fn(lin_params, opt_state, stats, images,
                                                   labels, mask, params)
      losses.append(loss)
    if lin_params is None:
      raise ValueError(f"make_train_iterator({epoch}) yielded no usable batch.")
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(np.mean([float(l) for l in losses])))
    if (epoch + 1) % test_every == 0 or epoch + 1 == epochs:
      features, labels = extract_features(functools.partial(encode_fn, params, stats),
                                          make_test_iterator(), mesh=mesh)
      tests.append([epoch + 1, linear_readout.linear_top1(lin_params, features, labels)])
  return {"linear_top1": tests[-1][1], "tests": tests, "batch_stats": stats,
          "params": lin_params}
