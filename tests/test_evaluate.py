"""Tests of the evaluators: weighted kNN (hcl_jax.evaluation.knn), the linear readouts
(hcl_jax.evaluation.linear_readout) and feature extraction (hcl_jax.evaluation.features)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hcl_jax.evaluation import features as features_lib  # noqa: E402
from hcl_jax.evaluation import knn  # noqa: E402
from hcl_jax.evaluation import linear_readout  # noqa: E402
from hcl_jax.distributed.mesh import make_mesh  # noqa: E402


@pytest.fixture(scope="module")
def mesh8():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  return make_mesh(jax.devices()[:8])


# ------------------------------------------------------------------ kNN


def _knn_oracle(train, train_labels, test, *, num_classes, k, temperature):
  """float64 NumPy transcription of the reference test() (scores [M, C])."""
  train = np.asarray(train, np.float64)
  test = np.asarray(test, np.float64)
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  sim = test @ train.T
  k = min(k, train.shape[0])
  index = np.argsort(-sim, axis=1)[:, :k]
  top = np.take_along_axis(sim, index, axis=1)
  weights = np.exp(top / temperature)
  scores = np.zeros((test.shape[0], num_classes))
  for row in range(test.shape[0]):
    for j in range(k):
      scores[row, train_labels[index[row, j]]] += weights[row, j]
  return scores


# Six train points on the unit circle (scaled by arbitrary norms: the kNN
# normalises), classes 0, 1, 1, 0, 2, 2.
_HAND_TRAIN = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0],
                        [-0.8, 0.6], [-0.8, -0.6]]) * np.array([[3.0], [0.5], [2.0], [1.0],
                                                                  [7.0], [0.1]])
_HAND_LABELS = np.array([0, 1, 1, 0, 2, 2])


def test_knn_hand_worked_weighting_beats_majority():
  # Test point (1, 0): cosines to the train points are 1, 0, 0, -1, -0.8, -0.8.
  # The k = 3 nearest are points 0 (class 0, cos 1) and 1, 2 (class 1, cos 0).
  # t = 0.5: class 0 gets exp(2) = 7.389, class 1 gets 2 exp(0) = 2: class 0
  # wins though class 1 has the majority of the neighbours.
  # Test point (0.6, 0.8): cosines 0.6, 0.8, -0.8, -0.6, 0, -0.96: the 3
  # nearest are point 1 (class 1, exp(1.6)), point 0 (class 0, exp(1.2)) and
  # point 4 (class 2, exp(0) = 1).
  test = np.array([[2.0, 0.0], [0.6, 0.8]])
  expected = np.array([[np.exp(2.0), 2.0, 0.0],
                       [np.exp(1.2), np.exp(1.6), 1.0]])
  # knn_scores divides each row by its nearest neighbour's weight.
  expected_normalised = expected / np.array([[np.exp(2.0)], [np.exp(1.6)]])
  scores = knn.knn_scores(_HAND_TRAIN.astype(np.float32), _HAND_LABELS,
                               test.astype(np.float32), num_classes=3, k=3, temperature=0.5)
  np.testing.assert_allclose(scores, expected_normalised, rtol=1e-5, atol=1e-6)
  predictions = knn.knn_predict(_HAND_TRAIN.astype(np.float32), _HAND_LABELS,
                                     test.astype(np.float32), num_classes=3, k=3,
                                     temperature=0.5)
  np.testing.assert_array_equal(predictions, [0, 1])
  # A flat temperature (t = 10) makes the vote nearly a plain majority:
  # class 0 gets exp(0.1) = 1.105 < class 1's 2.
  flat = knn.knn_predict(_HAND_TRAIN.astype(np.float32), _HAND_LABELS,
                              test[:1].astype(np.float32), num_classes=3, k=3,
                              temperature=10.0)
  np.testing.assert_array_equal(flat, [1])
  assert knn.knn_top1(_HAND_TRAIN.astype(np.float32), _HAND_LABELS,
                           test.astype(np.float32), np.array([0, 0]), num_classes=3, k=3,
                           temperature=0.5) == 0.5


def test_knn_k_clipped_to_bank_size():
  # k = 200 > N = 6: every train point votes. For (1, 0): class 0 gets
  # exp(2) + exp(-2), class 1 gets 2, class 2 gets 2 exp(-1.6).
  test = np.array([[1.0, 0.0]], np.float32)
  scores = knn.knn_scores(_HAND_TRAIN.astype(np.float32), _HAND_LABELS, test,
                               num_classes=3, k=200, temperature=0.5)
  expected = np.array([[np.exp(2.0) + np.exp(-2.0), 2.0, 2 * np.exp(-1.6)]]) / np.exp(2.0)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)


def _random_knn_problem(seed=0, num_train=300, num_test=53, dim=16, num_classes=5):
  rng = np.random.default_rng(seed)
  train = rng.normal(size=(num_train, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=num_train)
  test = rng.normal(size=(num_test, dim)).astype(np.float32)
  return train, labels, test


@pytest.mark.parametrize("k,temperature", [(20, 0.5), (1, 0.5), (200, 0.1), (7, 2.0)])
def test_knn_matches_float64_oracle(k, temperature):
  train, labels, test = _random_knn_problem()
  oracle = _knn_oracle(train, labels, test, num_classes=5, k=k, temperature=temperature)
  predictions = knn.knn_predict(train, labels, test, num_classes=5, k=k,
                                     temperature=temperature)
  np.testing.assert_array_equal(predictions, np.argmax(oracle, axis=1))
  scores = knn.knn_scores(train, labels, test, num_classes=5, k=k,
                               temperature=temperature)
  nearest = np.exp(np.max(_cosines(train, test), axis=1) / temperature)
  np.testing.assert_allclose(scores, oracle / nearest[:, None], rtol=2e-5, atol=1e-6)


def _cosines(train, test):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  return test.astype(np.float64) @ train.astype(np.float64).T


def test_knn_chunked_equals_unchunked():
  train, labels, test = _random_knn_problem(seed=1)
  whole = knn.knn_scores(train, labels, test, num_classes=5, k=25, batch_size=1000)
  for batch_size in (1, 7, 52):
    chunked = knn.knn_scores(train, labels, test, num_classes=5, k=25,
                                  batch_size=batch_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


def test_knn_sharded_equals_single_device(mesh8):
  train, labels, test = _random_knn_problem(seed=2)
  single = knn.knn_scores(train, labels, test, num_classes=5, k=25, batch_size=20)
  sharded = knn.knn_scores(train, labels, test, num_classes=5, k=25, batch_size=20,
                                mesh=mesh8)
  np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-7)
  labels_test = np.arange(test.shape[0]) % 5
  assert (knn.knn_top1(train, labels, test, labels_test, num_classes=5, k=25, mesh=mesh8)
          == knn.knn_top1(train, labels, test, labels_test, num_classes=5, k=25))


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=0), "k must be"),
    (dict(k=-3), "k must be"),
    (dict(k=2.5), "k must be"),
    (dict(k=True), "k must be"),
    (dict(num_classes=0), "num_classes must be"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(train_features=np.zeros((6,), np.float32)), "train_features must have rank 2"),
    (dict(test_features=np.zeros((2, 3), np.float32)), "same feature dim"),
    (dict(train_labels=np.zeros((5,), np.int32)), r"train_labels must have shape \[6\]"),
    (dict(train_labels=np.array([0, 1, 2, 3, 0, 1])), "must lie in"),
    (dict(train_labels=np.array([0, -1, 2, 0, 0, 1])), "must lie in"),
    (dict(train_labels=np.zeros((6,), np.float32)), "integer dtype"),
    (dict(train_features=np.zeros((0, 2), np.float32), train_labels=np.zeros((0,), np.int32)),
     "at least one row"),
])
def test_knn_rejects_bad_input(kwargs, message):
  args = dict(train_features=_HAND_TRAIN.astype(np.float32), train_labels=_HAND_LABELS,
              test_features=np.ones((2, 2), np.float32), num_classes=3, k=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    knn.knn_predict(**args)


def test_knn_top1_rejects_bad_test_labels():
  with pytest.raises(ValueError, match=r"test_labels must have shape \[2\]"):
    knn.knn_top1(_HAND_TRAIN.astype(np.float32), _HAND_LABELS,
                      np.ones((2, 2), np.float32), np.array([0]), num_classes=3, k=3)


# ------------------------------------------------------------ linear readout


def _numpy_readout(params, batches, *, learning_rate, weight_decay):
  """float64 oracle: torch Adam(lr, weight_decay) on mean cross-entropy.

  batches: iterable of (features [b, F], labels [b]) (only real rows).
  """
  kernel = np.asarray(params["kernel"], np.float64)
  bias = np.asarray(params["bias"], np.float64)
  state = {name: (np.zeros_like(p), np.zeros_like(p)) for name, p in
           (("kernel", kernel), ("bias", bias))}
  beta1, beta2, eps = 0.9, 0.999, 1e-8
  step = 0
  for features, labels in batches:
    features = np.asarray(features, np.float64)
    logits = features @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    dlogits = probs.copy()
    dlogits[np.arange(len(labels)), labels] -= 1.0
    dlogits /= len(labels)
    grads = {"kernel": features.T @ dlogits + weight_decay * kernel,
             "bias": dlogits.sum(axis=0) + weight_decay * bias}
    step += 1
    new = {}
    for name, p in (("kernel", kernel), ("bias", bias)):
      m, v = state[name]
      m = beta1 * m + (1 - beta1) * grads[name]
      v = beta2 * v + (1 - beta2) * grads[name] ** 2
      state[name] = (m, v)
      m_hat = m / (1 - beta1 ** step)
      v_hat = v / (1 - beta2 ** step)
      new[name] = p - learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    kernel, bias = new["kernel"], new["bias"]
  return {"kernel": kernel, "bias": bias}


def test_init_matches_torch_linear_bounds():
  params = linear_readout.init_linear_readout(jax.random.PRNGKey(0), 16, 300)
  assert params["kernel"].shape == (16, 300) and params["bias"].shape == (300,)
  for value in (params["kernel"], params["bias"]):
    value = np.asarray(value)
    assert np.all(np.abs(value) <= 0.25) and np.max(np.abs(value)) > 0.24


def test_fast_readout_matches_numpy_adam_oracle():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(23, 6)).astype(np.float32)
  labels = rng.integers(0, 4, size=23)
  lr, wd, batch_size, epochs, seed = 1e-2, 1e-3, 10, 3, 5
  params = linear_readout.train_linear_readout(features, labels, num_classes=4, epochs=epochs,
                                         batch_size=batch_size, learning_rate=lr,
                                         weight_decay=wd, seed=seed)

  def oracle_batches():
    for epoch in range(epochs):
      order = np.asarray(linear_readout._epoch_permutation(seed, epoch, 23))
      assert sorted(order) == list(range(23))
      for start in range(0, 23, batch_size):  # last batch has 3 rows
        rows = order[start:start + batch_size]
        yield features[rows], labels[rows]

  init = linear_readout.init_linear_readout(jax.random.PRNGKey(seed), 6, 4)
  expected = _numpy_readout(init, oracle_batches(), learning_rate=lr, weight_decay=wd)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(np.asarray(params[name]), expected[name], rtol=1e-4, atol=2e-5)


def test_fast_readout_sharded_equals_single_device(mesh8):
  rng = np.random.default_rng(1)
  features = rng.normal(size=(45, 6)).astype(np.float32)
  labels = rng.integers(0, 3, size=45)
  kwargs = dict(num_classes=3, epochs=4, batch_size=10, learning_rate=1e-2, seed=2)
  single = linear_readout.train_linear_readout(features, labels, **kwargs)
  sharded = linear_readout.train_linear_readout(features, labels, mesh=mesh8, **kwargs)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(single[name]),
                               rtol=1e-5, atol=1e-6)


def _images_and_encoder(seed=0):
  """Toy 'images' [b, 2, 2, 3] and a fixed random linear projection encoder."""
  rng = np.random.default_rng(seed)
  projection = jnp.asarray(rng.normal(size=(12, 20)).astype(np.float32))

  @jax.jit
  def encode_fn(images):
    return images.reshape(images.shape[0], -1) @ projection

  return rng, projection, encode_fn


def test_augmented_readout_matches_numpy_adam_oracle_and_sharding(mesh8):
  rng, projection, encode_fn = _images_and_encoder(seed=3)
  images = rng.normal(size=(13, 2, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=13)

  def make_train_iterator(epoch):
    # "Augmentation": epoch-dependent noise; batches of 5, 5 and a final
    # batch of 3 padded to 5 with a mask.
    noise = np.random.default_rng(100 + epoch).normal(size=images.shape).astype(np.float32)
    augmented = images + 0.1 * noise
    for start in (0, 5):
      yield {"image": augmented[start:start + 5], "label": labels[start:start + 5]}
    pad = np.zeros((2, 2, 2, 3), np.float32)
    yield {"image": np.concatenate([augmented[10:], pad]),
           "label": np.concatenate([labels[10:], [0, 0]]),
           "mask": np.array([True, True, True, False, False])}

  lr, wd, seed, epochs = 1e-2, 1e-4, 7, 2
  params = linear_readout.train_linear_readout_augmented(
      encode_fn, make_train_iterator, num_classes=3, epochs=epochs, learning_rate=lr,
      weight_decay=wd, seed=seed)

  projection64 = np.asarray(projection, np.float64)

  def oracle_batches():
    for epoch in range(epochs):
      for batch in make_train_iterator(epoch):
        mask = batch.get("mask", np.ones(len(batch["label"]), bool))
        yield (batch["image"][mask].reshape(-1, 12) @ projection64, batch["label"][mask])

  init = linear_readout.init_linear_readout(jax.random.PRNGKey(seed), 20, 3)
  expected = _numpy_readout(init, oracle_batches(), learning_rate=lr, weight_decay=wd)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(np.asarray(params[name]), expected[name], rtol=1e-4, atol=2e-5)

  sharded = linear_readout.train_linear_readout_augmented(
      encode_fn, make_train_iterator, num_classes=3, epochs=epochs, learning_rate=lr,
      weight_decay=wd, seed=seed, mesh=mesh8)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(params[name]),
                               rtol=1e-5, atol=1e-6)


def _separable_toy(rng, num_rows, weights):
  """Flattened images whose label is argmax of a linear map, with a margin."""
  rows = []
  while sum(len(r) for r in rows) < num_rows:
    x = rng.normal(size=(4 * num_rows, 12))
    scores = np.sort(x @ weights, axis=1)
    rows.append(x[scores[:, -1] - scores[:, -2] > 0.5])
  x = np.concatenate(rows)[:num_rows].astype(np.float32)
  return x.reshape(-1, 2, 2, 3), np.argmax(x @ weights, axis=1)


def _batches(images, labels, batch_size):
  """Fixed-size batches; the final one padded with masked rows."""
  for start in range(0, len(labels), batch_size):
    image, label = images[start:start + batch_size], labels[start:start + batch_size]
    real = len(label)
    yield {"image": features_lib.pad_rows(image, batch_size),
           "label": features_lib.pad_rows(label, batch_size),
           "mask": np.arange(batch_size) < real}


def test_extract_features_drops_masked_rows(mesh8):
  rng, projection, encode_fn = _images_and_encoder(seed=4)
  images = rng.normal(size=(21, 2, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=21)
  expected = images.reshape(21, 12).astype(np.float64) @ np.asarray(projection, np.float64)
  for mesh in (None, mesh8):
    features, out_labels = features_lib.extract_features(encode_fn, _batches(images, labels, 6),
                                                     mesh=mesh)
    assert features.shape == (21, 20) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out_labels, labels)


def test_readout_recovers_linearly_separable_labels():
  rng, _, encode_fn = _images_and_encoder(seed=5)
  weights = rng.normal(size=(12, 4))
  train_images, train_labels = _separable_toy(rng, 800, weights)
  test_images, test_labels = _separable_toy(rng, 300, weights)
  train_features, train_labels_out = features_lib.extract_features(
      encode_fn, _batches(train_images, train_labels, 128))
  test_features, _ = features_lib.extract_features(encode_fn, _batches(test_images, test_labels, 128))
  np.testing.assert_array_equal(train_labels_out, train_labels)
  params = linear_readout.train_linear_readout(train_features, train_labels, num_classes=4,
                                         epochs=40, batch_size=64, learning_rate=1e-2)
  assert linear_readout.linear_top1(params, test_features, test_labels) >= 0.97
  # Sanity of the metric: a shuffled labelling is at chance.
  assert linear_readout.linear_top1(params, test_features, rng.permutation(test_labels)) < 0.5


def test_readout_rejects_bad_input():
  features = np.zeros((4, 3), np.float32)
  labels = np.array([0, 1, 0, 1])
  with pytest.raises(ValueError, match="num_classes must be"):
    linear_readout.train_linear_readout(features, labels, num_classes=0, epochs=1)
  with pytest.raises(ValueError, match="must lie in"):
    linear_readout.train_linear_readout(features, labels, num_classes=1, epochs=1)
  with pytest.raises(ValueError, match="batch_size must be"):
    linear_readout.train_linear_readout(features, labels, num_classes=2, epochs=1, batch_size=0)
  with pytest.raises(ValueError, match="learning_rate must be"):
    linear_readout.train_linear_readout(features, labels, num_classes=2, epochs=1, learning_rate=0)
  with pytest.raises(ValueError, match="rank 2"):
    linear_readout.train_linear_readout(features[0], labels, num_classes=2, epochs=1)
  params = linear_readout.init_linear_readout(jax.random.PRNGKey(0), 3, 2)
  with pytest.raises(ValueError, match="feature dim 3"):
    linear_readout.linear_top1(params, np.zeros((4, 5), np.float32), labels)
  with pytest.raises(ValueError, match="yielded no batch"):
    linear_readout.train_linear_readout_augmented(lambda x: x, lambda epoch: iter(()),
                                            num_classes=2, epochs=1)
