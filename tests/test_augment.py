"""Augmentations: shapes, ranges, probabilities, effects, eager == tf.data."""

import numpy as np
import pytest

import support  # tests/ is on sys.path under pytest

from hcl_jax.data import augment as aug
from hcl_jax.data._tf import tf

N_DRAWS = 400  # binomial std of a frequency <= 0.025; tolerances are 4 std


def _seed(i: int) -> tf.Tensor:
  return tf.stack([tf.constant(1234, tf.int64), tf.cast(i, tf.int64)])


def _image(h=12, w=10, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype(np.float32)


def _augment_config(**overrides):
  """The schema's config.augment (configs/digits.py) with ``overrides``."""
  config = support.digits_config().augment
  config.update(overrides)
  return config


def _over_seeds(fn, image, n=N_DRAWS) -> np.ndarray:
  """[n, ...] outputs of fn(image, seed_i), computed in one tf.data pass."""
  ds = tf.data.Dataset.range(n).map(lambda i: fn(tf.constant(image), _seed(i)))
  return np.stack(list(ds.as_numpy_iterator()))


def test_flip_is_mirror_with_probability_half():
  image = _image()
  out = _over_seeds(lambda x, s: aug.random_flip(x, s, prob=0.5), image)
  flipped = np.all(out == image[:, ::-1], axis=(1, 2, 3))
  same = np.all(out == image, axis=(1, 2, 3))
  assert np.all(flipped ^ same)  # each draw is exactly the image or its mirror
  assert abs(flipped.mean() - 0.5) < 0.1


def test_grayscale_is_luma_with_probability():
  image = _image()
  out = _over_seeds(lambda x, s: aug.random_grayscale(x, s, prob=0.2), image)
  luma = image @ np.array([0.299, 0.587, 0.114], np.float32)
  grey = np.all(np.abs(out - luma[..., None]) < 1e-3, axis=(1, 2, 3))
  same = np.all(out == image, axis=(1, 2, 3))
  assert np.all(grey ^ same)
  assert abs(grey.mean() - 0.2) < 0.1


def test_random_apply_probability():
  image = _image()
  out = _over_seeds(lambda x, s: aug.random_apply(lambda y, _: y * 0.0, x, s, 0.8), image)
  applied = np.all(out == 0.0, axis=(1, 2, 3))
  assert abs(applied.mean() - 0.8) < 0.1
  with pytest.raises(ValueError, match="prob"):
    aug.random_apply(lambda y, _: y, tf.constant(image), _seed(0), 1.5)


def test_crop_is_a_window_and_covers_all_positions():
  # Area fraction 1/4 and ratio 1 of an 8x8 image: a 4x4 window; resizing 4 -> 4
  # is the identity, so the output is exactly one of the 25 windows.
  image = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3) / 192.0
  out = _over_seeds(lambda x, s: aug.random_resized_crop(
      x, s, size=4, scale=(0.25, 0.25), ratio=(1.0, 1.0)), image, n=300)
  assert out.shape == (300, 4, 4, 3)
  positions = set()
  for crop in out:
    hits = [(i, j) for i in range(5) for j in range(5)
            if np.allclose(crop, image[i:i + 4, j:j + 4], atol=1e-6)]
    assert len(hits) == 1
    positions.add(hits[0])
  assert len(positions) == 25


def test_crop_shape_range_and_full_crop():
  image = _image(h=20, w=14)
  out = _over_seeds(lambda x, s: aug.random_resized_crop(x, s, size=9), image, n=50)
  assert out.shape == (50, 9, 9, 3)
  assert out.min() >= 0.0 and out.max() <= 1.0
  # Whole-area, ratio-1 crop of a square image is the whole image.
  square = _image(h=6, w=6)
  full = aug.random_resized_crop(tf.constant(square), _seed(0), size=6,
                                 scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(full.numpy(), square, atol=1e-6)
  with pytest.raises(ValueError, match="crop_scale"):
    aug.random_resized_crop(tf.constant(square), _seed(0), size=4, scale=(0.5, 0.1))


def test_crop_fallback_for_impossible_ratio():
  # A 2x20 strip at scale 1, ratio 1 never fits, so torchvision's fallback
  # applies: the centred crop of width round(2 * 1) = 2, i.e. columns 9-10.
  strip = _image(h=2, w=20)
  out = aug.random_resized_crop(tf.constant(strip), _seed(3), size=2,
                                scale=(1.0, 1.0), ratio=(1.0, 1.0)).numpy()
  np.testing.assert_allclose(out, strip[:, 9:11], atol=1e-6)


def test_color_ops_match_numpy():
  x = _image()
  luma = x @ np.array([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(aug.adjust_brightness(x, 1.3).numpy(),
                             np.clip(x * 1.3, 0, 1), atol=1e-6)
  np.testing.assert_allclose(aug.adjust_contrast(x, 0.7).numpy(),
                             np.clip(0.7 * x + 0.3 * luma.mean(), 0, 1), atol=1e-5)
  np.testing.assert_allclose(aug.adjust_saturation(x, 1.4).numpy(),
                             np.clip(1.4 * x - 0.4 * luma[..., None], 0, 1), atol=1e-5)
  red = np.zeros((2, 2, 3), np.float32)
  red[..., 0] = 1.0
  green = np.zeros_like(red)
  green[..., 1] = 1.0
  np.testing.assert_allclose(aug.adjust_hue(red, 1 / 3).numpy(), green, atol=1e-5)
  np.testing.assert_allclose(aug.adjust_hue(x, 0.0).numpy(), x, atol=1e-5)


def test_color_jitter_range_identity_and_brightness_factor():
  x = _image()
  out = _over_seeds(lambda y, s: aug.color_jitter(y, s), x, n=100)
  assert out.shape == (100,) + x.shape and out.min() >= 0 and out.max() <= 1
  assert len({o.tobytes() for o in out}) == 100
  still = aug.color_jitter(tf.constant(x), _seed(0), brightness=0, contrast=0,
                           saturation=0, hue=0)
  np.testing.assert_allclose(still.numpy(), x, atol=1e-5)
  dim = x * 0.5  # no clipping at factors <= 1.4
  bright = _over_seeds(lambda y, s: aug.color_jitter(y, s, brightness=0.4, contrast=0,
                                                     saturation=0, hue=0), dim, n=50)
  factors = bright / dim
  assert np.allclose(factors, factors[:, :1, :1, :1], atol=1e-4)  # one factor per draw
  assert factors.min() >= 0.6 - 1e-4 and factors.max() <= 1.4 + 1e-4
  assert factors.max() - factors.min() > 0.4
  with pytest.raises(ValueError, match="hue"):
    aug.color_jitter(tf.constant(x), _seed(0), hue=0.7)


def test_normalize():
  x = np.full((2, 2, 3), 0.5, np.float32)
  out = aug.normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 2.0)).numpy()
  np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 0.25])
  with pytest.raises(ValueError, match="std"):
    aug.normalize(x, (0, 0, 0), (1, 0, 1))


def test_train_view_eager_equals_tf_data_and_seeds_matter():
  image = (_image(h=16, w=16) * 255).astype(np.uint8)
  config = _augment_config()

  def view(x, s):
    return aug.train_view(x, s, config, size=8, mean=aug.CIFAR10_MEAN, std=aug.CIFAR10_STD)

  in_data = _over_seeds(view, image, n=20)
  eager = np.stack([view(tf.constant(image), _seed(i)).numpy() for i in range(20)])
  np.testing.assert_allclose(in_data, eager, atol=1e-6)
  traced = tf.function(view)
  np.testing.assert_allclose(traced(tf.constant(image), _seed(3)).numpy(), eager[3], atol=1e-6)
  assert in_data.shape == (20, 8, 8, 3) and in_data.dtype == np.float32
  assert len({v.tobytes() for v in in_data}) == 20
  # Normalised [0, 1] values stay within [(0 - mean) / std, (1 - mean) / std].
  lo = -np.array(aug.CIFAR10_MEAN) / np.array(aug.CIFAR10_STD)
  hi = (1 - np.array(aug.CIFAR10_MEAN)) / np.array(aug.CIFAR10_STD)
  assert np.all(in_data >= lo - 1e-5) and np.all(in_data <= hi + 1e-5)


def test_eval_view_resizes_and_normalizes():
  image = np.full((16, 16, 1), 255, np.uint8)
  out = aug.eval_view(tf.constant(image), size=8, mean=(0.5, 0.5, 0.5),
                      std=(0.5, 0.5, 0.5)).numpy()
  np.testing.assert_allclose(out, np.ones((8, 8, 3)), atol=1e-6)


def test_train_view_blurs_last_with_the_published_probability():
  """crop (whole image), no flip/jitter/grey, then the blur: every view is the
  normalised image or its 3x3 blur at some sigma in [0.1, 2] (checked on the
  centre pixel of a point image), about half of them blurred."""
  image = np.zeros((7, 7, 3), np.float32)
  image[3, 3] = 1.0
  config = _augment_config(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                           jitter_prob=0.0, grayscale_prob=0.0, blur_kernel_size=3,
                           blur_prob=0.5, blur_sigma=(0.1, 2.0))
  mean, std = aug.CIFAR10_MEAN, aug.CIFAR10_STD
  out = _over_seeds(lambda x, s: aug.train_view(x, s, config, size=7, mean=mean, std=std),
                    image) * np.array(std, np.float32) + np.array(mean, np.float32)
  plain = np.all(np.abs(out - image) < 1e-5, axis=(1, 2, 3))
  centre = out[~plain, 3, 3, 0]
  w = lambda sigma: np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * sigma ** 2))
  lo, hi = (w(2.0)[1] / w(2.0).sum()) ** 2, (w(0.1)[1] / w(0.1).sum()) ** 2
  assert np.all((centre >= lo - 1e-5) & (centre <= hi + 1e-5))
  assert abs(plain.mean() - 0.5) < 4 * np.sqrt(0.25 / N_DRAWS)
  # digits' kernel 1 (int(0.1 * 16)): never blurred.
  config.blur_kernel_size = 1
  out = _over_seeds(lambda x, s: aug.train_view(x, s, config, size=7, mean=mean, std=std),
                    image, n=20) * np.array(std, np.float32) + np.array(mean, np.float32)
  np.testing.assert_allclose(out, np.broadcast_to(image, out.shape), atol=1e-5)
