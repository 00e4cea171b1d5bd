"""Loading the datasets of ``hcl_jax.registry.DATASETS`` (their splits and sizes).

``load_builder(config)`` returns a prepared TFDS builder or fails within
seconds: TFDS datasets are never downloaded here (this code runs on machines
without internet and on TPU hosts that read a gs:// bucket). The ``local``
datasets (digits) are the exception: built here from the copy a package ships,
on first use.

Adding a dataset: its :class:`hcl_jax.registry.Dataset` entry; if TFDS lacks
it, ``local=True`` there and its builder in ``LOCAL_BUILDERS`` here, as
``digits`` has (``hcl_jax/data/digits.py``).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from hcl_jax import registry
from hcl_jax.data.digits import digits_builder
from hcl_jax.registry import DATASETS


# The builders of the ``local`` datasets, by name: (data_dir, image_size) -> builder.
LOCAL_BUILDERS = {"digits": digits_builder}


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not in data_dir and will not be downloaded."""


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
  """
  spec = get_spec(config.dataset)
  data_dir = resolve_data_dir(config.data_dir)
  if spec.local:
    return LOCAL_BUILDERS[config.dataset](data_dir, config.image_size)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        not_prepared_message(spec.tfds_name, data_dir, str(builder.data_dir)))
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
