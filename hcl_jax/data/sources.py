"""Loading the datasets of ``hcl_jax.config.registry.DATASETS`` (their splits and sizes).

``load_builder(config)`` returns a prepared TFDS builder or fails within
seconds: TFDS datasets are never downloaded here (this code runs on machines
without internet and on TPU hosts that read a gs:// bucket). The ``local``
datasets (digits) are the exception: built here from the copy a package ships,
on first use.

Every TFRecord shard of every split is read through once per process before
it is used (``check_shards``): a missing, truncated or corrupt shard (TFRecord
checks each record's CRC) ends in one line naming the file, before the
pre-training starts, the test split included.

Adding a dataset: its :class:`hcl_jax.config.registry.Dataset` entry; if TFDS lacks
it, ``local=True`` there and its builder in ``LOCAL_BUILDERS`` here, as
``digits`` has (``hcl_jax/data/digits.py``).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from hcl_jax.config import registry
from hcl_jax.data.digits import digits_builder
from hcl_jax.config.registry import DATASETS


# The builders of the ``local`` datasets, by name: (data_dir, image_size) -> builder.
LOCAL_BUILDERS = {"digits": digits_builder}


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not in data_dir and will not be downloaded."""


class CorruptDataError(ValueError):
  """A shard file of a prepared dataset is missing, truncated or corrupt."""


# ``tfds.testing.mock_data`` replaces this method (its datasets have no files).
_REAL_AS_DATASET = vars(tfds.core.dataset_builder.DatasetBuilder)["as_dataset"]
_checked_dirs: set[str] = set()


def _count_records(path: str) -> int:
  """The records of one TFRecord file, each one's CRC checked (TensorFlow's
  reader); CorruptDataError naming the file if it can't be read through."""
  import tensorflow as tf

  try:
    dataset = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())
  except (tf.errors.OpError, OSError) as e:
    import re
    cause = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(getattr(e, "message", e)))  # TF's op names
    cause = " ".join(cause.split())[:200]
    raise CorruptDataError(f"{path}: unreadable TFRecord shard ({type(e).__name__}: {cause}); "
                           "prepare the dataset again or copy this file anew.") from None


def check_shards(builder: tfds.core.DatasetBuilder) -> None:
  """CorruptDataError (one line naming the file) unless every shard of every
  split of ``builder`` reads through with the example count its metadata
  records. Once per prepared folder and process (seconds for CIFAR-10)."""
  where = str(builder.data_dir)
  if where in _checked_dirs:
    return
  if (vars(tfds.core.dataset_builder.DatasetBuilder)["as_dataset"] is not _REAL_AS_DATASET
      or builder.info.file_format != tfds.core.FileFormat.TFRECORD):
    return  # tfds.testing.mock_data (no files), or a format read otherwise
  for split in builder.info.splits.values():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      path = os.fspath(path)
      if not tfds.core.Path(path).exists():
        raise CorruptDataError(f"{path}: shard file missing from the prepared dataset; "
                               "prepare the dataset again or copy this file anew.")
      found = _count_records(path)
      if found != expected:
        raise CorruptDataError(
            f"{path}: holds {found} records, its dataset_info.json says {expected} "
            "(a truncated copy?); prepare the dataset again or copy this file anew.")
  _checked_dirs.add(where)


def get_spec(name: str) -> registry.Dataset:
  """The registry's entry for ``name``; ValueError naming it and the known ones."""
  return registry.get(DATASETS, name, "dataset")


def not_prepared_message(name: str, data_dir: str, looked_in: str) -> str:
  return (
      f"TFDS dataset {name!r} is not prepared under data_dir={data_dir!r} "
      f"(looked for {looked_in}), and hcl_jax never downloads it.\n"
      f"On a machine with internet, prepare it:\n"
      f"  tfds build {name} --data_dir=/path/to/tensorflow_datasets\n"
      f"or in Python:\n"
      f"  import tensorflow_datasets as tfds\n"
      f"  tfds.builder({name!r}, data_dir='/path/to/tensorflow_datasets')"
      f".download_and_prepare()\n"
      f"then copy the folder /path/to/tensorflow_datasets/{name} to this machine "
      f"(or to a gs:// bucket for TPU hosts) and set config.data_dir to the "
      f"folder that contains {name}/ (e.g. --config.data_dir=gs://my-bucket/tfds).")


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir``, or TFDS's own default when empty: $TFDS_DATA_DIR, else
  ~/tensorflow_datasets (read at call time, never relative to the cwd)."""
  return data_dir or tfds.core.constants.get_default_data_dir()


def load_builder(config) -> tfds.core.DatasetBuilder:
  """The prepared builder for ``config.dataset`` in ``config.data_dir``
  (``""``: TFDS's default, :func:`resolve_data_dir`).

  Raises:
    ValueError: unknown dataset.
    DatasetNotPreparedError: a TFDS dataset is missing (never downloads).
    CorruptDataError: a shard file is missing, truncated or corrupt.
  """
  spec = get_spec(config.dataset)
  data_dir = resolve_data_dir(config.data_dir)
  if spec.local:
    builder = LOCAL_BUILDERS[config.dataset](data_dir, config.image_size)
  else:
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
      raise DatasetNotPreparedError(
          not_prepared_message(spec.tfds_name, data_dir, str(builder.data_dir)))
  check_shards(builder)
  return builder


def host_split(split: str, process_index: int, process_count: int, *,
               drop_remainder: bool):
  """The part of ``split`` that process ``process_index`` reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index!r}: need 0 <= index < "
                     f"process_count={process_count!r}.")
  if process_count == 1:
    return split
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count,
                                    drop_remainder=drop_remainder)


def num_examples(builder: tfds.core.DatasetBuilder, split) -> int:
  return int(builder.info.splits[split].num_examples)


def read(builder: tfds.core.DatasetBuilder, split):
  """Examples of ``split`` in a fixed order: {"image": uint8 [H, W, C], "label": int64}."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
