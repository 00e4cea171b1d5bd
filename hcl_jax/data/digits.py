"""``digits``: the UCI handwritten digits from scikit-learn as a TFDS dataset.

The embedded default dataset: 1,797 real 8x8 grey images of the digits 0-9
(``sklearn.datasets.load_digits``, shipped inside scikit-learn, so building
needs no network). The builder turns them into a normal TFDS dataset in
``data_dir`` on first use, so digits goes through the same code path as
CIFAR-10.

Images: pixel values 0..16 are scaled to 0..255 (ink is bright), resized
bilinearly from 8x8 to ``image_size`` x ``image_size`` (one builder config per
size: 8, 16, 32, 64, 96 px, named e.g. ``"32px"``) and repeated to 3 channels:
uint8 [S, S, 3].

Splits (fixed): a stratified split of the 1,797 images with scikit-learn's
``train_test_split(test_size=360, stratify=labels, random_state=0)``:
``train`` 1,437 images, ``test`` 360 images, each in increasing order of the
original index. Each example also stores ``index``, its row in
``load_digits()``, so it can be checked against scikit-learn's arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_EXAMPLES = 1797
NUM_TEST = 360
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
SPLIT_SEED = 0
IMAGE_SIZES = (8, 16, 32, 64, 96)


def split_indices() -> dict[str, np.ndarray]:
  """The fixed split: {"train": [1437] int64, "test": [360] int64}, sorted."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  labels = load_digits().target
  train, test = train_test_split(np.arange(NUM_EXAMPLES), test_size=NUM_TEST,
                                 stratify=labels, random_state=SPLIT_SEED)
  return {"train": np.sort(train), "test": np.sort(test)}


def render(image_8x8: np.ndarray, size: int) -> np.ndarray:
  """One sklearn digit (values 0..16, [8, 8]) -> uint8 [size, size, 3]."""
  grey = np.round(np.asarray(image_8x8, np.float64) * (255.0 / 16.0)).astype(np.uint8)
  if size != grey.shape[0]:
    grey = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
  return np.repeat(grey[:, :, None], 3, axis=2)


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  image_size: int = 32


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI handwritten digits (scikit-learn's copy), resized, 3 channels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DigitsConfig(name=f"{s}px", description=f"{s}x{s} RGB", image_size=s)
      for s in IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "32px"

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with scikit-learn: nothing to download
    return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits
    digits = load_digits()
    size = self.builder_config.image_size
    for i in indices:
      yield int(i), {"image": render(digits.images[i], size),
                     "label": int(digits.target[i]), "index": int(i)}


def digits_builder(data_dir: str, image_size: int) -> Digits:
  """The prepared ``digits`` builder for ``image_size``, built if missing.

  Building takes a few seconds. On several hosts sharing one data_dir (a
  bucket), build it once first (e.g. run this on one host), since concurrent
  first builds of the same folder race.
  """
  if image_size not in IMAGE_SIZES:
    raise ValueError(f"image_size={image_size!r}: digits is built at one of {IMAGE_SIZES}.")
  builder = Digits(data_dir=data_dir, config=f"{image_size}px")
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
