"""config.data_dir defaults to TFDS's own default, independent of the cwd."""

import os

from configs.digits import get_config
from hcl_jax.data import sources


def test_default_is_tfds_default_honouring_tfds_data_dir(monkeypatch, tmp_path):
  assert get_config().data_dir == ""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert sources.resolve_data_dir("") == str(tmp_path / "tfds")
  monkeypatch.delenv("TFDS_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert sources.resolve_data_dir("") == os.path.join(str(tmp_path / "home"), "tensorflow_datasets")
  # An explicit data_dir (a folder, a bucket) is taken as given.
  assert sources.resolve_data_dir("gs://bucket/tfds") == "gs://bucket/tfds"


def test_digits_land_in_tfds_data_dir_not_the_cwd(monkeypatch, tmp_path):
  elsewhere = tmp_path / "cwd"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  config = get_config()
  config.image_size = 8
  builder = sources.load_builder(config)
  assert builder.info.splits["train"].num_examples == 1437
  assert str(builder.data_dir).startswith(str(tmp_path / "tfds" / "digits"))
  assert list(elsewhere.iterdir()) == []
