"""Our augmentations against torchvision, which the published code uses.

Deterministic ops with their random factors fixed, on 4 random 32x32 uint8
images and one smooth 96x96 one (``_images``), compared two ways:

* with torchvision's float tensor functions on the same float image
  (image / 255): the formulas;
* with torchvision on the PIL image, as the published ``train_transform``
  runs them (uint8 out of every op): ours rounded to uint8 vs PIL's.

Measured max |ours - torchvision| (torch 2.14.1, torchvision 0.29.1; the
bounds asserted below are these, rounded up):

| op | float tensor path | PIL path (uint8 levels) |
|---|---|---|
| resized crop of a given box (bilinear, antialiased) | 1.8e-6 | 1 |
| horizontal flip | 0 | 0 |
| brightness (factors 0.6, 0.9, 1.3) | 0 | 1 |
| contrast (0.6, 0.9, 1.3) | 6.0e-8 | 1 |
| saturation (0.6, 0.9, 1.3) | 0 | 1 |
| hue (shifts -0.1, -0.03, 0.05, 0.1) | 1.1e-6 | 13 |
| grayscale (3 channels) | 0 | 1 |
| normalise (CIFAR-10 mean/std) | 0 | — |

The PIL path rounds to uint8 after each op (one level: rounding); its hue
goes through PIL's 8-bit HSV image (hue, saturation and value each
quantised to 256 levels, then np.uint8 hue arithmetic), which moves
saturated pixels of the random images by up to 13 levels; the float path,
which our float pipeline implements, agrees to 1e-6.

The random parameters are checked by statistics over many draws against
torchvision's own samplers (``RandomResizedCrop.get_params``,
``ColorJitter.get_params``): crop height/width/area/aspect distributions
(two-sample Kolmogorov-Smirnov), the 10-attempt fallback's frequency and its
box on a 40x6 image where most attempts fail, the uniform random order of the
four jitter ops (chi-square over the 24 orders), the jitter factors' ranges,
and the application probabilities of flip, jitter, grayscale and blur.

torchvision runs in a subprocess (tests/torchvision_reference.py): importing
it after TensorFlow crashes the interpreter.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import torchvision_reference as ref  # tests/ is on sys.path under pytest; imports no torch
from hcl_jax.data import augment as aug
from hcl_jax.data._tf import tf

# test-only: requirements.txt pins torch and torchvision. Looked up, not
# imported: importing it here, after TensorFlow, would crash the process.
if importlib.util.find_spec("torchvision") is None:
  pytest.skip("torchvision is not installed (pip install -r requirements.txt)",
              allow_module_level=True)
stats = pytest.importorskip("scipy.stats")

N_DRAWS = ref.N_DRAWS
# One worker builds `theirs` (a torchvision subprocess) for all of them.
pytestmark = pytest.mark.xdist_group("torchvision_parity")


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
  path = tmp_path_factory.mktemp("tv") / "reference.npz"
  script = os.path.join(os.path.dirname(__file__), "torchvision_reference.py")
  subprocess.run([sys.executable, script, str(path)], check=True, timeout=600)
  with np.load(path) as data:
    return dict(data)


def _ours_in(image):
  return tf.constant(image.astype(np.float32) / 255.0)


def _check(ours, theirs, key, tensor_tol, pil_levels):
  """max |ours - tensor path| <= tensor_tol and, if given, <= pil_levels uint8 levels."""
  ours = np.asarray(ours)
  assert np.abs(ours - theirs[key.format("t")]).max() <= tensor_tol, key
  if pil_levels is not None:
    pil = theirs[key.format("p")].astype(int)
    assert np.abs(np.round(ours * 255.0).astype(int) - pil).max() <= pil_levels, key


def test_resized_crop_of_a_box(theirs):
  for i, image in enumerate(ref.images()):
    for j, (top, left, ch, cw) in enumerate(ref.boxes(image)):
      ours = aug.resized_crop(_ours_in(image), top, left, ch, cw, size=32).numpy()
      _check(ours, theirs, f"crop/{{}}/{i}/{j}", 5e-6, 1)
  # Can fail: without antialiasing a 96 -> 32 downscale is far off.
  plain = tf.image.resize(_ours_in(ref.images()[-1]), (32, 32), antialias=False).numpy()
  assert np.abs(plain - theirs["resize96/t/4"]).max() > 0.01


def test_flip_brightness_contrast_saturation_grayscale_normalize(theirs):
  for i, image in enumerate(ref.images()):
    x = _ours_in(image)
    _check(x[:, ::-1, :], theirs, f"flip/{{}}/{i}", 0.0, 0)
    for k, f in enumerate(ref.FACTORS):
      _check(aug.adjust_brightness(x, f), theirs, f"brightness/{{}}/{i}/{k}", 1e-6, 1)
      _check(aug.adjust_contrast(x, f), theirs, f"contrast/{{}}/{i}/{k}", 1e-6, 1)
      _check(aug.adjust_saturation(x, f), theirs, f"saturation/{{}}/{i}/{k}", 1e-6, 1)
    _check(aug.grayscale(x), theirs, f"gray/{{}}/{i}", 1e-6, 1)
    _check(aug.normalize(x, ref.MEAN, ref.STD), theirs, f"normalize/{{}}/{i}", 1e-6, None)
  assert ref.MEAN == aug.CIFAR10_MEAN and ref.STD == aug.CIFAR10_STD


def test_hue(theirs):
  for i, image in enumerate(ref.images()):
    for k, shift in enumerate(ref.HUES):
      _check(aug.adjust_hue(_ours_in(image), shift), theirs, f"hue/{{}}/{i}/{k}", 5e-6, 13)


def _our_boxes(height, width) -> np.ndarray:
  ds = tf.data.Dataset.range(N_DRAWS).map(lambda i: tf.stack(aug.crop_box(
      tf.constant(height), tf.constant(width), tf.stack([tf.constant(3, tf.int64), i]))))
  return np.concatenate(list(ds.batch(1000).as_numpy_iterator()))


@pytest.mark.parametrize("height,width", ref.CROP_SHAPES)
def test_crop_box_distribution_matches_torchvision(theirs, height, width):
  ours, tv = _our_boxes(height, width), theirs[f"boxes/{height}x{width}"]
  for boxes in (ours, tv):   # inside the image
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 0] + boxes[:, 2] <= height)
    assert np.all(boxes[:, 1] + boxes[:, 3] <= width)

  def features(boxes):
    top, left, h, w = boxes.T
    return {"h": h, "w": w, "area": h * w / (height * width), "aspect": w / h,
            "top_frac": top / np.maximum(height - h, 1),
            "left_frac": left / np.maximum(width - w, 1)}

  f_ours, f_tv = features(ours), features(tv)
  for key in f_ours:
    p = stats.ks_2samp(f_ours[key], f_tv[key], method="asymp").pvalue
    assert p > 1e-4, (key, p)
  # The 10-attempt fallback: on 40x6 most attempts fail; the fallback box is
  # the centred 8x6 crop (in_ratio 0.15 < 3/4: w = 6, h = round(6 / 0.75)).
  fallback = lambda b: (b[:, 2] == 8) & (b[:, 3] == 6) & (b[:, 0] == 16) & (b[:, 1] == 0)
  rate_ours, rate_tv = fallback(ours).mean(), fallback(tv).mean()
  tol = 4 * np.sqrt(max(rate_tv * (1 - rate_tv), 1e-4) * 2 / N_DRAWS)
  assert abs(rate_ours - rate_tv) <= tol
  if (height, width) == (40, 6):
    assert rate_tv > 0.05   # the fallback is really exercised


def test_jitter_order_and_factors(theirs):
  ds = tf.data.Dataset.range(N_DRAWS).map(lambda i: aug.jitter_params(
      tf.stack([tf.constant(5, tf.int64), i]), brightness=0.4, contrast=0.4, saturation=0.4,
      hue=0.1))
  orders, b, c, s, h = (np.stack(v) for v in zip(*ds.as_numpy_iterator()))
  for name, order in (("ours", orders), ("torchvision", theirs["jitter/order"])):
    assert np.all(np.sort(order, axis=1) == np.arange(4)), name
    counts = np.unique(order @ np.array([64, 16, 4, 1]), return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-4, name
  for k, ours in enumerate((b, c, s, h)):
    assert stats.ks_2samp(ours, theirs["jitter/factors"][:, k]).pvalue > 1e-4, k
  assert b.min() >= 0.6 and b.max() <= 1.4 and h.min() >= -0.1 and h.max() <= 0.1


@pytest.mark.parametrize("op,prob", [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2),
                                     ("blur", 0.5)])
def test_application_probabilities(op, prob):
  """The published RandomHorizontalFlip(0.5), RandomApply(jitter, 0.8),
  RandomGrayscale(0.2), GaussianBlur's 0.5: the fraction of changed outputs."""
  image = ref.images()[0][:8, :8].astype(np.float32) / 255.0
  fns = {
      "flip": lambda x, s: aug.random_flip(x, s, prob=0.5),
      "jitter": lambda x, s: aug.random_apply(aug.color_jitter, x, s, 0.8),
      "gray": lambda x, s: aug.random_grayscale(x, s, prob=0.2),
      "blur": lambda x, s: aug.random_blur(x, s, kernel_size=3),
  }
  ds = tf.data.Dataset.range(N_DRAWS).map(
      lambda i: fns[op](tf.constant(image), tf.stack([tf.constant(9, tf.int64), i])))
  out = np.stack(list(ds.as_numpy_iterator()))
  applied = np.any(out != image, axis=(1, 2, 3)).mean()
  assert abs(applied - prob) <= 4 * np.sqrt(prob * (1 - prob) / N_DRAWS)
