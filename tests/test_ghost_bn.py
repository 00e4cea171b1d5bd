"""Ghost BatchNorm (``config.model.bn_group_size``) against a float64 NumPy
oracle and against the DataParallel picture it stands for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import get_config
from hcl_jax.config import check as config_check
from hcl_jax import models


def _oracle(x: np.ndarray, views: int, groups: int, eps: float = 1e-5):
  """float64: per view, torch.chunk the view's rows into ``groups`` chunks and
  normalise each chunk with its own mean and biased variance over rows and
  spatial positions. Returns (y, mean over chunks and views of the chunk means,
  same for the variances)."""
  x = x.astype(np.float64)
  n = x.shape[0]
  per_view = n // views
  chunk = -(-per_view // groups)
  y = np.empty_like(x)
  means, variances = [], []
  for v in range(views):
    rows = np.arange(v, n, views)          # image-major / view-minor layout
    for start in range(0, per_view, chunk):
      idx = rows[start:start + chunk]
      part = x[idx].reshape(-1, x.shape[-1])
      mean, var = part.mean(0), part.var(0)
      y[idx] = (x[idx] - mean) / np.sqrt(var + eps)
      means.append(mean)
      variances.append(var)
  return y, np.mean(means, 0), np.mean(variances, 0)


@pytest.mark.parametrize("shape,views,groups", [
    ((16, 3, 3, 4), 2, 2),    # 8 images per view, 2 chunks of 4
    ((14, 2, 2, 3), 2, 3),    # 7 per view: chunks 3, 3, 1 (torch.chunk)
    ((5, 6), 1, 4),           # 5 rows: chunk 2 -> only 3 chunks, as torch.chunk
    ((12, 5), 2, 1),          # one group: plain per-view statistics
])
def test_view_batchnorm_groups_match_numpy(shape, views, groups):
  x = np.random.default_rng(0).normal(1.5, 2.0, shape).astype(np.float32)
  bn = models.ViewBatchNorm(num_views=views, num_groups=groups, momentum=0.9)
  variables = bn.init(jax.random.key(0), jnp.asarray(x))
  y, updates = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  want, mean, var = _oracle(x, views, groups)
  np.testing.assert_allclose(np.asarray(y), want, atol=2e-5)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["mean"]), 0.1 * mean, atol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["var"]), 0.9 + 0.1 * var,
                             atol=1e-5)
  if groups > 1:  # the test can fail: whole-view statistics give something else
    whole, _, _ = _oracle(x, views, 1)
    assert np.abs(whole - want).max() > 1e-2


def test_model_groups_equal_separate_forwards():
  """bn_groups = 2 on a batch == the two halves through the network separately
  (what 2-GPU DataParallel computes), both views stacked as in training."""
  model = models.ContrastiveModel(
      encoder=models.ResNet(stage_sizes=(1, 1), block_cls=models.BasicBlock, base_width=4),
      head=models.ProjectionHead(hidden_dim=16, out_dim=8))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8, 8, 3)), jnp.float32)  # 8 images x 2 views
  variables = model.init(jax.random.key(0), x, train=False)
  run = lambda v, images, groups: model.apply(v, images, True, 2, groups, mutable=["batch_stats"])
  (h, z), _ = run(variables, x, 2)
  (h0, z0), _ = run(variables, x[:8], 1)
  (h1, z1), _ = run(variables, x[8:], 1)
  np.testing.assert_allclose(np.asarray(h), np.concatenate([h0, h1]), atol=2e-5)
  np.testing.assert_allclose(np.asarray(z), np.concatenate([z0, z1]), atol=2e-5)
  (h_whole, _), _ = run(variables, x, 1)
  assert np.abs(np.asarray(h_whole) - np.asarray(h)).max() > 1e-3


def test_bn_groups_for_and_validation():
  config = get_config()
  assert config.model.bn_group_size == 0 and models.bn_groups_for(config.model, 256) == 1
  config.model.bn_group_size = 128
  assert models.bn_groups_for(config.model, 256) == 2
  config_check.validate(config)
  for bad in (1, -2, 100):
    config.model.bn_group_size = bad
    with pytest.raises(ValueError, match="bn_group_size"):
      config_check.validate(config)
