"""The published readout (image/linear.py) against a step-by-step oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcl_jax.evaluation import linear_readout
from hcl_jax import models
from hcl_jax.evaluation.readout_published import train_linear_readout_published

N_TRAIN, N_TEST, BATCH, CLASSES = 14, 10, 6, 3


def _model():
  return models.ContrastiveModel(
      encoder=models.ResNet(stage_sizes=(1,), block_cls=models.BasicBlock, base_width=4),
      head=models.ProjectionHead(hidden_dim=8, out_dim=4))


def _data():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(N_TRAIN, 6, 6, 3)).astype(np.float32)
  test = rng.normal(size=(N_TEST, 6, 6, 3)).astype(np.float32)
  return (train, rng.integers(0, CLASSES, N_TRAIN), test, rng.integers(0, CLASSES, N_TEST))


def _batches(images, labels, epoch, shuffle=True):
  """BATCH-row batches, the last one padded with masked rows (as make_eval_dataset)."""
  order = np.random.default_rng(epoch).permutation(len(images)) if shuffle else np.arange(
      len(images))
  for start in range(0, len(images), BATCH):
    idx = order[start:start + BATCH]
    pad = BATCH - len(idx)
    yield {"image": np.concatenate([images[idx], np.zeros((pad, *images.shape[1:]), np.float32)]),
           "label": np.concatenate([labels[idx], -np.ones(pad, np.int64)]),
           "mask": np.arange(BATCH) < len(idx)}


def _oracle(model, variables, data, *, epochs, groups, lr=1e-2):
  """image/linear.py by hand: train-mode forwards of each DataParallel chunk
  separately (their running averages averaged), CE on real rows, Adam+L2,
  eval-mode test every 5 epochs and after the last."""
  train, train_labels, test, test_labels = data
  params, stats = variables["params"], variables["batch_stats"]
  encode = lambda st, x, train_mode: model.apply(
      {"params": params, "batch_stats": st}, x, train_mode,
      method=lambda m, x, t: m.encoder(x, t), mutable=["batch_stats"] if train_mode else False)
  lin = linear_readout.init_linear_readout(jax.random.PRNGKey(0), 4, CLASSES)  # F = base_width
  opt = linear_readout.readout_optimizer(lr, 1e-6)
  opt_state = opt.init(lin)
  tests = []
  for epoch in range(epochs):
    for batch in _batches(train, train_labels, epoch):
      x, y = batch["image"][batch["mask"]], batch["label"][batch["mask"]]
      chunk = -(-len(x) // groups)
      outs = [encode(stats, x[i:i + chunk], True) for i in range(0, len(x), chunk)]
      feats = jnp.concatenate([f for f, _ in outs])
      stats = jax.tree.map(lambda *a: sum(a) / len(a), *[u["batch_stats"] for _, u in outs])

      def ce(p):
        logits = feats @ p["kernel"] + p["bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

      updates, opt_state = opt.update(jax.grad(ce)(lin), opt_state, lin)
      lin = optax.apply_updates(lin, updates)
    if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
      feats = encode(stats, test, False)
      pred = np.argmax(np.asarray(feats @ lin["kernel"] + lin["bias"]), -1)
      tests.append([epoch + 1, float(np.mean(pred == test_labels))])
  return tests, stats, lin


@pytest.mark.parametrize("groups", [1, 2])
def test_published_readout_matches_oracle(groups):
  model, data = _model(), _data()
  variables = model.init(jax.random.key(1), jnp.asarray(data[0][:2]), train=False)
  before = jax.tree.map(np.array, variables["batch_stats"])
  out = train_linear_readout_published(
      model, variables["params"], variables["batch_stats"],
      lambda epoch: _batches(data[0], data[1], epoch),
      lambda: _batches(data[2], data[3], 0, shuffle=False),
      num_classes=CLASSES, epochs=7, bn_groups=groups, learning_rate=1e-2, seed=0)
  tests, stats, lin = _oracle(model, variables, data, epochs=7, groups=groups)
  assert [e for e, _ in out["tests"]] == [5, 7] == [e for e, _ in tests]
  np.testing.assert_allclose([t for _, t in out["tests"]], [t for _, t in tests], atol=1e-6)
  assert out["linear_top1"] == out["tests"][-1][1]
  np.testing.assert_allclose(out["params"]["kernel"], lin["kernel"], atol=2e-5)
  for got, want, initial in zip(jax.tree.leaves(out["batch_stats"]), jax.tree.leaves(stats),
                                jax.tree.leaves(before)):
    np.testing.assert_allclose(got, want, atol=2e-5)
  moved = [np.abs(g - i).max() for g, i in zip(jax.tree.leaves(out["batch_stats"]),
                                              jax.tree.leaves(before))]
  assert max(moved) > 1e-2   # train mode: the running averages kept moving
  # The caller's variables are untouched.
  for got, initial in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(got), initial)


def test_published_readout_bad_epochs():
  model, data = _model(), _data()
  variables = model.init(jax.random.key(1), jnp.asarray(data[0][:2]), train=False)
  with pytest.raises(ValueError, match="epochs"):
    train_linear_readout_published(model, variables["params"], variables["batch_stats"],
                                   lambda e: iter(()), lambda: iter(()), num_classes=3, epochs=0)


def test_published_readout_on_a_mesh_equals_one_device():
  """Batches split over 2 devices (rows 6 and 2: no trimming) == one device."""
  from hcl_jax.distributed.mesh import make_mesh
  model, data = _model(), _data()
  variables = model.init(jax.random.key(1), jnp.asarray(data[0][:2]), train=False)
  run = lambda mesh: train_linear_readout_published(
      model, variables["params"], variables["batch_stats"],
      lambda epoch: _batches(data[0], data[1], epoch),
      lambda: _batches(data[2], data[3], 0, shuffle=False),
      num_classes=CLASSES, epochs=5, bn_groups=2, learning_rate=1e-2, mesh=mesh)
  one, two = run(None), run(make_mesh(jax.devices()[:2]))
  assert one["tests"] == two["tests"]
  for a, b in zip(jax.tree.leaves(one["batch_stats"]), jax.tree.leaves(two["batch_stats"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
