"""Encoders, projection head and per-view BatchNorm."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import get_config
from hcl_jax.config import check as config_check
from hcl_jax import losses
from hcl_jax import models

import support  # tests/ is on sys.path under pytest


def _images(n, size, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


@pytest.mark.parametrize("name,width,features", [
    ("resnet18", 1 / 16, 32),       # 4 * 8 channels in stage 4
    ("resnet34", 1 / 16, 32),
    ("resnet50", 1 / 16, 128),      # bottleneck expansion 4
])
def test_create_model_output_shapes(name, width, features):
  config = get_config()
  config.model.name, config.model.width_multiplier = name, width
  config.model.projection_hidden_dim, config.model.projection_dim = 16, 8
  model = models.create_model(config)
  x = jnp.zeros((4, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out[0].shape == (4, features) and out[1].shape == (4, 8)
  blocks = [k for k in variables["params"]["encoder"] if k.startswith("stage")]
  expected_blocks = {"resnet18": 8, "resnet34": 16, "resnet50": 16}[name]
  assert len(blocks) == expected_blocks


@pytest.mark.parametrize("key,value,match", [
    ("name", "resnet101", "config.model.name"),
    ("stem", "tiny", "config.model.stem"),
    ("width_multiplier", 0.0, "config.model.width_multiplier"),
    ("width_multiplier", 1e-3, "config.model.width_multiplier"),
    ("projection_dim", 0, "config.model.projection_dim"),
])
def test_bad_model_config_rejected(key, value, match):
  config = get_config()
  config.model[key] = value
  with pytest.raises(ValueError, match=match):
    config_check.validate(config)  # the entry point's check; create_model trusts it


def test_the_registry_names_every_model_built_here():
  # config.check refuses names by the registry's list; models builds them.
  from hcl_jax.config import registry
  assert tuple(models.MODELS) == registry.MODELS


def test_projection_head_structure_and_normalised_outputs():
  model = support.tiny_model()
  x = _images(6, 8)
  variables = model.init(jax.random.key(0), x, train=False)
  head = variables["params"]["head"]
  assert set(head["hidden"]) == {"kernel"}            # Linear without bias
  assert head["hidden"]["kernel"].shape == (8, 16)   # features (stage 2: 2 * 4 ch) -> hidden
  assert set(head["hidden_norm"]) == {"scale", "bias"}   # BatchNorm after it
  assert set(head["out"]) == {"kernel", "bias"}
  assert head["out"]["kernel"].shape == (16, 8)
  (features, projections), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  # Projections come out unnormalised; the loss normalises them (once).
  np.testing.assert_allclose(np.linalg.norm(losses.l2_normalize(projections), axis=1), 1.0,
                             rtol=1e-5)
  encoded = model.apply(variables, x, method=models.ContrastiveModel.encode)
  eval_features, _ = model.apply(variables, x, train=False)
  np.testing.assert_allclose(encoded, eval_features, rtol=1e-6)


@pytest.mark.parametrize("stem,stage1_size", [("cifar", 32), ("imagenet", 8)])
def test_stem_spatial_size(stem, stage1_size):
  model = support.tiny_model(stem=stem)
  x = _images(2, 32)
  variables = model.init(jax.random.key(0), x, train=False)
  _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  stage1 = state["intermediates"]["encoder"]["stage1_block1"]["__call__"][0]
  assert stage1.shape == (2, stage1_size, stage1_size, 4)
  stem_conv = variables["params"]["encoder"]["stem_conv"]["kernel"]
  assert stem_conv.shape[:2] == ((3, 3) if stem == "cifar" else (7, 7))


def test_view_batch_norm_per_view_statistics_numpy():
  rng = np.random.default_rng(1)
  b, v, c = 5, 2, 3
  x = rng.normal(size=(b * v, 4, 4, c)).astype(np.float32)
  x[1::2] = 3.0 * x[1::2] + 2.0                      # view 2 has other statistics
  bn = models.ViewBatchNorm(num_views=v)
  variables = bn.init(jax.random.key(0), x)
  y, updates = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  expected = np.empty_like(x)
  means, variances = [], []
  for view in range(v):
    xv = x[view::v].astype(np.float64)
    mean, var = xv.mean(axis=(0, 1, 2)), xv.var(axis=(0, 1, 2))
    expected[view::v] = (xv - mean) / np.sqrt(var + 1e-5)
    means.append(mean), variances.append(var)
  np.testing.assert_allclose(y, expected, atol=1e-4)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * np.mean(means, 0), atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * np.mean(variances, 0),
                             atol=1e-5)


def test_stacked_views_equal_separate_forward_passes():
  """One [2B] pass with per-view BN == the published code's two [B] passes."""
  model = support.tiny_model()
  v1, v2 = _images(6, 8, seed=2), _images(6, 8, seed=3) * 2.0 + 1.0
  variables = model.init(jax.random.key(0), v1, train=False)
  stacked = jnp.stack([v1, v2], axis=1).reshape(12, 8, 8, 3)
  (_, z), _ = model.apply(variables, stacked, train=True, num_views=2, mutable=["batch_stats"])
  (_, z1), _ = model.apply(variables, v1, train=True, mutable=["batch_stats"])
  (_, z2), _ = model.apply(variables, v2, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(z[0::2], z1, atol=2e-5)
  np.testing.assert_allclose(z[1::2], z2, atol=2e-5)


# torchvision's num_params at full width (pytorch.org/vision/stable/models:
# ResNet18/34/50_Weights.IMAGENET1K_V1: 11,689,512 / 21,797,672 / 25,557,032),
# less its fc layer (512 or 2048 x 1000 weights + 1000 biases). The CIFAR stem
# is a 3x3 instead of a 7x7 conv from 3 to 64 channels: 7,680 fewer weights
# (resnet50: 23,508,032 -> 23,500,352, as measured with torchvision).
_TORCHVISION_WITHOUT_FC = {"resnet18": 11_689_512 - 513_000,
                           "resnet34": 21_797_672 - 513_000,
                           "resnet50": 25_557_032 - 2_049_000}
_CIFAR_STEM_SAVES = (7 * 7 - 3 * 3) * 3 * 64


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_full_width_parameter_counts_match_torchvision(name, stem):
  config = get_config()
  config.model.name, config.model.stem, config.model.width_multiplier = name, stem, 1.0
  model = models.create_model(config)
  # Shapes only (jax.eval_shape): no full-width weights are allocated.
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)),
                                                train=False))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]["encoder"]))
  expected = _TORCHVISION_WITHOUT_FC[name] - (_CIFAR_STEM_SAVES if stem == "cifar" else 0)
  assert count == expected, (name, stem, count, expected)
  if (name, stem) == ("resnet50", "cifar"):
    assert count == 23_500_352
