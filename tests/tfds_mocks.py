"""Offline TFDS metadata for tfds.testing.mock_data (shared by the tests).

Without internet TFDS has no split metadata for cifar10 / stl10, so
mock_data(policy=USE_FILES) needs a dataset_info.json in data_dir.
"""

import os

import tensorflow_datasets as tfds

MOCK_EXAMPLES = 32


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
