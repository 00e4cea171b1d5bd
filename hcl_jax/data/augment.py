"""The paper's SimCLR-style augmentations as small, stateless tf functions.

Every random op takes an explicit ``seed``: an int32/int64 tensor of shape [2]
as used by ``tf.random.stateless_*``. Same image and seed, same output, eagerly
or inside ``tf.data``/``tf.function``. Images are float32 [H, W, 3] with values
in [0, 1] until ``normalize``.

The semantics follow torchvision, which the published code uses:

- ``random_resized_crop``: torchvision's algorithm (10 tries of area fraction
  ~ U(scale), log aspect ratio ~ U(log ratio); else a centre crop), then a
  bilinear, antialiased resize to ``size`` x ``size``.
- ``color_jitter``: brightness (multiply), contrast (blend with the mean of
  the grey image), saturation (blend with the grey image), hue (shift), each
  factor ~ U(max(0, 1 - s), 1 + s) (hue: shift ~ U(-h, h)), in a random order,
  clipped to [0, 1] after each op.
- ``random_grayscale``: ITU-R 601 luma (0.299, 0.587, 0.114), repeated to 3
  channels.
- ``random_blur``: the published code's ``GaussianBlur`` (image/utils.py):
  with probability 0.5, OpenCV's ``cv2.GaussianBlur(img, (k, k), sigma)``
  with sigma ~ U(0.1, 2.0): a separable kernel exp(-x^2 / (2 sigma^2)),
  x = -(k-1)/2 .. (k-1)/2, normalised to sum 1, the same sigma in both
  directions, OpenCV's default border BORDER_REFLECT_101 (``tf.pad`` mode
  REFLECT: the edge pixel is not repeated). The published k is
  int(0.1 * 32) = 3 for every dataset; k = 1 is the identity (digits at 16 px:
  int(0.1 * 16) = 1, so the blur is a no-op there, as the formula gives).

``train_view`` composes them as in the paper: crop -> flip -> (jitter with
prob p) -> grayscale -> blur -> normalize. ``eval_view`` only normalizes
(and resizes when asked to).

The published code applies these ops to PIL uint8 images, so it rounds to
uint8 after every op; here the image stays float32 from the crop on. Measured
against torchvision and OpenCV in tests/test_torchvision_parity.py and
tests/test_blur_opencv.py (the per-op errors are in their docstrings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from hcl_jax.data._tf import tf

# Per-op seed streams, folded into a view's seed so no two ops share one.
_CROP, _FLIP, _JITTER, _GRAY, _BLUR = range(5)
_CROP_TRIES = 10
# Mean and std the published code uses for every dataset (CIFAR-10's).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def fold_in(seed: tf.Tensor, data) -> tf.Tensor:
  """A new [2] seed derived from ``seed`` and the integer ``data``."""
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


def _check_range(name: str, lo_hi: Sequence[float], lo_min: float) -> tuple[float, float]:
  lo, hi = (float(v) for v in lo_hi)
  if not lo_min <= lo <= hi:
    raise ValueError(f"{name}={tuple(lo_hi)!r}: need {lo_min} <= low <= high.")
  return lo, hi


def _check_prob(name: str, prob: float) -> float:
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"{name}={prob!r}: a probability must be in [0, 1].")
  return float(prob)


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, C] in [0, 255] -> float32 in [0, 1]; 1 channel -> 3."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  if image.shape[-1] == 1:
    image = tf.tile(image, [1, 1, 3])
  return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear, antialiased resize of [H, W, 3] to [size, size, 3]."""
  return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def crop_box(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, *,
             scale: Sequence[float] = (0.08, 1.0),
             ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[tf.Tensor, ...]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, crop_h, crop_w).

  Ten tries of area fraction ~ U(scale) and log aspect ~ U(log ratio), sides
  rounded half to even (Python's ``round``, as torchvision); the first try
  that fits is kept with a uniform position. If none fits: the largest
  centred crop whose aspect ratio is within ``ratio``.
  """
  s_lo, s_hi = _check_range("crop_scale", scale, 1e-6)
  r_lo, r_hi = _check_range("crop_ratio", ratio, 1e-6)
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  seeds = [fold_in(seed, k) for k in range(4)]
  area = h_f * w_f * tf.random.stateless_uniform([_CROP_TRIES], seeds[0], s_lo, s_hi)
  aspect = tf.exp(tf.random.stateless_uniform(
      [_CROP_TRIES], seeds[1], math.log(r_lo), math.log(r_hi)))
  ws = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  hs = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)

  # torchvision's fallback: the largest centred crop with a ratio in range.
  in_ratio = w_f / h_f
  fb_w = tf.where(in_ratio > r_hi, tf.cast(tf.round(h_f * r_hi), tf.int32), width)
  fb_h = tf.where(in_ratio < r_lo, tf.cast(tf.round(w_f / r_lo), tf.int32), height)
  any_ok = tf.reduce_any(ok)
  crop_w = tf.where(any_ok, ws[first], fb_w)
  crop_h = tf.where(any_ok, hs[first], fb_h)
  top = tf.random.stateless_uniform([], seeds[2], 0, height - crop_h + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[3], 0, width - crop_w + 1, dtype=tf.int32)
  top = tf.where(any_ok, top, (height - crop_h) // 2)
  left = tf.where(any_ok, left, (width - crop_w) // 2)
  return top, left, crop_h, crop_w


def resized_crop(image: tf.Tensor, top, left, crop_h, crop_w, *, size: int) -> tf.Tensor:
  """The box (top, left, crop_h, crop_w) of ``image``, resized to size x size."""
  return resize(tf.image.crop_to_bounding_box(image, top, left, crop_h, crop_w), size)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, *, size: int,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """A random crop of area fraction ~ scale and aspect ~ ratio, resized.

  Args:
    image: float32 [H, W, 3].
    seed: [2] seed.
    size: output height and width.
    scale: (low, high) fraction of the image area, 0 < low <= high.
    ratio: (low, high) width / height, 0 < low <= high (sampled log-uniform).

  Returns:
    float32 [size, size, 3].
  """
  if size < 1:
    raise ValueError(f"size={size!r}: must be a positive int.")
  shape = tf.shape(image)
  box = crop_box(shape[0], shape[1], seed, scale=scale, ratio=ratio)
  return resized_crop(image, *box, size=size)


def random_apply(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], image: tf.Tensor,
                 seed: tf.Tensor, prob: float) -> tf.Tensor:
  """``fn(image, seed')`` with probability ``prob``, else ``image``."""
  prob = _check_prob("prob", prob)
  coin = tf.random.stateless_uniform([], fold_in(seed, 0)) < prob
  return tf.cond(coin, lambda: fn(image, fold_in(seed, 1)), lambda: image)


def random_flip(image: tf.Tensor, seed: tf.Tensor, *, prob: float = 0.5) -> tf.Tensor:
  """Mirror left-right ([H, W, 3], axis W) with probability ``prob``."""
  return random_apply(lambda x, _: x[:, ::-1, :], image, seed, prob)


def grayscale(image: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma of [H, W, 3], repeated to 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_grayscale(image: tf.Tensor, seed: tf.Tensor, *, prob: float = 0.2) -> tf.Tensor:
  """``grayscale(image)`` with probability ``prob``."""
  return random_apply(lambda x, _: grayscale(x), image, seed, prob)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image))
  return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  gray = tf.image.rgb_to_grayscale(image)
  return tf.clip_by_value(factor * image + (1.0 - factor) * gray, 0.0, 1.0)


def adjust_hue(image: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
  """Rotate hue by ``shift`` turns (in [-0.5, 0.5])."""
  return tf.clip_by_value(tf.image.adjust_hue(image, shift), 0.0, 1.0)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, *, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1) -> tf.Tensor:
  """torchvision ColorJitter: the four adjustments in a random order.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    seed: [2] seed.
    brightness, contrast, saturation: strength s >= 0, factor ~ U(max(0, 1-s), 1+s).
    hue: 0 <= h <= 0.5, shift ~ U(-h, h) turns.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  for name, value in (("brightness", brightness), ("contrast", contrast),
                      ("saturation", saturation)):
    if value < 0:
      raise ValueError(f"{name}={value!r}: must be >= 0.")
  if not 0 <= hue <= 0.5:
    raise ValueError(f"hue={hue!r}: must be in [0, 0.5].")

  order, b, c, s, h = jitter_params(seed, brightness=brightness, contrast=contrast,
                                    saturation=saturation, hue=hue)
  branches = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
              lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, h)]
  for k in range(4):
    image = tf.switch_case(order[k], [lambda f=f: f(image) for f in branches])
  return image


def jitter_params(seed: tf.Tensor, *, brightness: float, contrast: float,
                  saturation: float, hue: float) -> tuple[tf.Tensor, ...]:
  """torchvision ``ColorJitter.get_params``: (order [4], b, c, s, h).

  ``order`` is a uniform permutation of (0 brightness, 1 contrast,
  2 saturation, 3 hue); factors ~ U(max(0, 1 - v), 1 + v), hue ~ U(-h, h).
  """
  def factor(k: int, strength: float) -> tf.Tensor:
    return tf.random.stateless_uniform(
        [], fold_in(seed, k), max(0.0, 1.0 - strength), 1.0 + strength)

  b, c, s = factor(0, brightness), factor(1, contrast), factor(2, saturation)
  h = tf.random.stateless_uniform([], fold_in(seed, 3), -hue, hue)
  order = tf.random.experimental.stateless_shuffle(tf.range(4), fold_in(seed, 4))
  return order, b, c, s, h


def gaussian_kernel(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """OpenCV ``getGaussianKernel(k, sigma)`` for sigma > 0: float32 [k], sum 1."""
  x = tf.range(kernel_size, dtype=tf.float32) - (kernel_size - 1) / 2.0
  w = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  return w / tf.reduce_sum(w)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, *, kernel_size: int) -> tf.Tensor:
  """``cv2.GaussianBlur(image, (k, k), sigma)`` of a float [H, W, C] image.

  Separable: rows, then columns, with OpenCV's default border
  BORDER_REFLECT_101 (``tf.pad`` REFLECT). ``kernel_size`` k must be odd;
  k = 1 returns the image unchanged (OpenCV's 1-tap kernel is [1]).
  """
  _check_kernel_size(kernel_size)
  if kernel_size == 1:
    return image
  r = kernel_size // 2
  w = gaussian_kernel(sigma, kernel_size)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  x = tf.pad(image, [[r, r], [r, r], [0, 0]], mode="REFLECT")
  # k shifted slices: for the 3-tap kernel this is cheaper than a conv.
  x = tf.add_n([w[i] * x[:, i:i + width, :] for i in range(kernel_size)])
  return tf.add_n([w[i] * x[i:i + height, :, :] for i in range(kernel_size)])


def _check_kernel_size(kernel_size: int) -> int:
  if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or (
      kernel_size < 1 or kernel_size % 2 == 0):
    raise ValueError(f"blur_kernel_size={kernel_size!r}: must be an odd int >= 1 "
                     "(OpenCV's GaussianBlur needs an odd size; 1 = no blur).")
  return kernel_size


def random_blur(image: tf.Tensor, seed: tf.Tensor, *, kernel_size: int,
                sigma: Sequence[float] = (0.1, 2.0), prob: float = 0.5) -> tf.Tensor:
  """The published ``GaussianBlur``: with probability ``prob``, sigma ~ U(sigma)."""
  lo, hi = _check_range("blur_sigma", sigma, 1e-6)
  _check_kernel_size(kernel_size)
  if kernel_size == 1:
    return image   # the identity whatever sigma: skip the coin
  return random_apply(
      lambda x, s: gaussian_blur(x, tf.random.stateless_uniform([], s, lo, hi),
                                 kernel_size=kernel_size),
      image, seed, prob)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(image - mean) / std per channel."""
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(f"mean={mean!r}, std={std!r}: need 3 values each, std > 0.")
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_view(image: tf.Tensor, seed: tf.Tensor, augment_config, *, size: int,
               mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """One augmented view: uint8 or float [H, W, C] -> float32 [size, size, 3].

  ``augment_config`` has the fields of ``config.augment`` (configs/digits.py).
  """
  a = augment_config
  x = to_float(image) if image.dtype == tf.uint8 else image
  x = random_resized_crop(x, fold_in(seed, _CROP), size=size,
                          scale=a.crop_scale, ratio=a.crop_ratio)
  x = random_flip(x, fold_in(seed, _FLIP), prob=a.flip_prob)
  x = random_apply(
      lambda y, s: color_jitter(y, s, brightness=a.brightness, contrast=a.contrast,
                                saturation=a.saturation, hue=a.hue),
      x, fold_in(seed, _JITTER), a.jitter_prob)
  x = random_grayscale(x, fold_in(seed, _GRAY), prob=a.grayscale_prob)
  x = random_blur(x, fold_in(seed, _BLUR), kernel_size=a.blur_kernel_size,
                  sigma=a.blur_sigma, prob=a.blur_prob)
  return normalize(x, mean, std)


def eval_view(image: tf.Tensor, *, size: int | None, mean: Sequence[float],
              std: Sequence[float]) -> tf.Tensor:
  """No augmentation: [H, W, C] -> float32 [size, size, 3], resized if needed.

  ``size=None`` keeps the image's own size (the published ``test_transform``:
  STL-10 is evaluated at 96x96).
  """
  x = to_float(image) if image.dtype == tf.uint8 else image
  if size is not None and (x.shape[0] != size or x.shape[1] != size):
    x = resize(x, size)
  return normalize(x, mean, std)
