"""Helpers shared by the tests: the digits config, offline TFDS metadata.

Without internet TFDS has no split metadata for cifar10 / stl10, so
mock_data(policy=USE_FILES) needs a dataset_info.json in data_dir.
"""

import os
import runpy

import pytest
import tensorflow_datasets as tfds

MOCK_EXAMPLES = 32
# What the end-to-end tests' stand-in for the (slow) evaluation returns.
FAKE_EVAL = {"linear_top1": 12.5, "knn_top1": 25.0}
DIGITS_TEST_SIDE = 8  # the tiny end-to-end runs' image side
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
  """A fresh configs/digits.py config (configs/ is loaded by path, not imported)."""
  return runpy.run_path(os.path.join(_ROOT, "configs", "digits.py"))["get_config"]()


def write_mock_metadata(data_dir: str, name: str, split_sizes: dict[str, int]) -> None:
  """dataset_info.json for `name`, so mock_data(USE_FILES) knows the splits."""
  builder = tfds.builder(name, data_dir=data_dir)
  splits = [tfds.core.SplitInfo(
      name=split, shard_lengths=[n], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
          dataset_name=name, split=split, filetype_suffix="tfrecord"))
            for split, n in split_sizes.items()]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


@pytest.fixture()
def fake_eval(monkeypatch):
  """evaluate_encoder replaced by FAKE_EVAL, in this process."""
  from hcl_jax import evaluate
  monkeypatch.setattr(evaluate, "evaluate_encoder", lambda *a, **k: dict(FAKE_EVAL))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """digits at DIGITS_TEST_SIDE px, built once per module (and its subprocesses)."""
  from hcl_jax.data import digits as digits_lib
  path = str(tmp_path_factory.mktemp("tfds"))
  digits_lib.digits_builder(path, DIGITS_TEST_SIDE)
  return path
