"""Input pipelines: digits offline, mocked CIFAR-10/STL-10, determinism, resume,
fail-fast on missing data, global arrays on 8 simulated devices."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import itertools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import support  # noqa: E402  (tests/ is on sys.path under pytest)
import tensorflow_datasets as tfds  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from hcl_jax.distributed import mesh as mesh_lib  # noqa: E402
from hcl_jax.data import (DatasetNotPreparedError, global_batches,  # noqa: E402
                          make_eval_dataset, make_pretrain_dataset)
from hcl_jax.data import digits as digits_lib  # noqa: E402
from hcl_jax.data import sources  # noqa: E402
from hcl_jax.data.augment import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402



def _base_config():
  return support.digits_config()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture()
def config(data_dir):
  config = _base_config()
  config.data_dir = data_dir
  config.image_size = 8  # digits' native size: fast, and renders exactly
  config.batch_size = 256
  return config


def _take(dataset, n):
  return list(itertools.islice(dataset.as_numpy_iterator(), n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ------------------------------------------------------------------ digits


def test_digits_builds_offline_and_matches_sklearn(config):
  builder = digits_lib.digits_builder(config.data_dir, 8)
  sk = load_digits()
  seen = []
  for split, size in (("train", 1437), ("test", 360)):
    rows = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(rows) == size
    for row in rows:
      i = row["index"]
      assert row["label"] == sk.target[i]
      grey = np.round(sk.images[i] * 255 / 16)
      np.testing.assert_array_equal(row["image"], np.repeat(grey[..., None], 3, 2))
    seen.append({int(r["index"]) for r in rows})
    # Stratified: each class's share within one image of the overall share.
    counts = np.bincount([r["label"] for r in rows], minlength=10)
    np.testing.assert_allclose(counts, np.bincount(sk.target) * size / 1797, atol=1)
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 1797


def test_digits_bad_size(config):
  with pytest.raises(ValueError, match="image_size=28"):
    digits_lib.digits_builder(config.data_dir, 28)


# ------------------------------------------------------------- pre-training


def test_pretrain_batches(config):
  data = make_pretrain_dataset(config)
  assert (data.steps_per_epoch, data.num_examples) == (1437 // 256, 1437)
  assert data.image_shape == (8, 8, 3) and data.local_batch_size == 256
  batch = _take(data.dataset, 1)[0]
  assert set(batch) == {"view1", "view2", "label"}
  for v in ("view1", "view2"):
    assert batch[v].shape == (256, 8, 8, 3) and batch[v].dtype == np.float32
    lo = -np.array(CIFAR10_MEAN) / np.array(CIFAR10_STD)
    hi = (1 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    assert np.all(batch[v] >= lo - 1e-5) and np.all(batch[v] <= hi + 1e-5)
  assert batch["label"].shape == (256,) and set(batch["label"]) <= set(range(10))
  # The two views of every image differ.
  assert np.all(np.any(batch["view1"] != batch["view2"], axis=(1, 2, 3)))


def test_pretrain_deterministic_resume_and_reshuffle(config):
  steps = make_pretrain_dataset(config).steps_per_epoch  # 5
  first = _take(make_pretrain_dataset(config).dataset, steps + 2)
  _assert_batches_equal(first[:1], _take(make_pretrain_dataset(config).dataset, 1))
  # Resuming at k (mid-epoch and across the epoch boundary) == skipping k.
  for k in (2, steps + 1):
    _assert_batches_equal(first[k:k + 1],
                          _take(make_pretrain_dataset(config, start_step=k).dataset, 1))
  # Each epoch has its own order.
  assert not np.array_equal(first[0]["label"], first[steps]["label"])
  config.seed = 1
  other = _take(make_pretrain_dataset(config).dataset, 1)[0]
  assert not np.array_equal(other["view1"], first[0]["view1"])


def test_pretrain_per_process(config):
  a = make_pretrain_dataset(config, process_index=0, process_count=2)
  b = make_pretrain_dataset(config, process_index=1, process_count=2)
  assert a.local_batch_size == 128 and a.steps_per_epoch == 1437 // 256
  ba, bb = _take(a.dataset, 1)[0], _take(b.dataset, 1)[0]
  assert ba["view1"].shape == (128, 8, 8, 3)
  assert not np.array_equal(ba["view1"], bb["view1"])
  # Together the processes' batches are the single-process run's global
  # batches, images and augmentations alike (also after a resume).
  def assert_hosts_make_the_whole(hosts, whole):
    parts = [_take(h.dataset, 2) for h in hosts]
    _assert_batches_equal(
        [{k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in parts[0][i]}
         for i in range(2)],
        _take(whole.dataset, 2))

  whole = make_pretrain_dataset(config)
  assert whole.steps_per_epoch == a.steps_per_epoch
  assert_hosts_make_the_whole((a, b), whole)
  assert_hosts_make_the_whole(
      [make_pretrain_dataset(config, start_step=6, process_index=p, process_count=2)
       for p in (0, 1)],
      make_pretrain_dataset(config, start_step=6))
  with pytest.raises(ValueError, match="batch_size=256"):
    make_pretrain_dataset(config, process_index=0, process_count=3)
  config.batch_size = 4096
  with pytest.raises(ValueError, match="batch_size=4096"):
    make_pretrain_dataset(config)


# -------------------------------------------------------------------- eval


def test_eval_test_split_every_example_once(config):
  sk = load_digits()
  test_idx = digits_lib.split_indices()["test"]
  batches = _take(make_eval_dataset(config, split="test", augment=False, batch_size=128), 100)
  assert len(batches) == 3  # ceil(360 / 128)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  assert mask.sum() == 360 and np.all(mask[:360]) and not np.any(mask[360:])
  assert np.all(labels[360:] == -1) and np.all(images[360:] == 0)
  # Unaugmented: exactly the normalised sklearn images (as a multiset).
  grey = np.round(sk.images[test_idx] * 255 / 16).astype(np.uint8) / np.float32(255)
  expect = (np.repeat(grey[..., None], 3, 3) - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
  key = lambda arr: sorted(a.astype(np.float32).round(4).tobytes() for a in arr)
  assert key(images[:360]) == key(expect)
  np.testing.assert_array_equal(np.bincount(labels[:360], minlength=10),
                                np.bincount(sk.target[test_idx], minlength=10))


def test_eval_multi_process_padding_and_augment(config):
  per_host = [_take(make_eval_dataset(config, split="test", augment=False, batch_size=64,
                                      process_index=p, process_count=2), 100)
              for p in range(2)]
  assert [len(b) for b in per_host] == [6, 6]  # 180 per host / 32 -> 6 batches
  assert sum(b["mask"].sum() for host in per_host for b in host) == 360
  plain = _take(make_eval_dataset(config, split="train", augment=False), 1)[0]
  augmented = _take(make_eval_dataset(config, split="train", augment=True), 1)[0]
  np.testing.assert_array_equal(plain["label"], augmented["label"])
  assert not np.allclose(plain["image"], augmented["image"])
  with pytest.raises(ValueError, match="split='val'"):
    make_eval_dataset(config, split="val", augment=False)


# ------------------------------------------------- which examples each host reads


@pytest.fixture()
def index_as_label(monkeypatch):
  """Every digits example read with its index (its sklearn row) as its label.

  The pipelines pass the label through untouched, so each batch says which
  examples it holds: two hosts' batches differ anyway (the augmentation seeds
  include the process index), the examples they read must not overlap.
  """
  def read(builder, split):
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["index"]})

  monkeypatch.setattr(sources, "read", read)


def test_pretrain_hosts_read_disjoint_examples(config, index_as_label, monkeypatch):
  # A whole epoch per host; the views don't matter here, so skip augmenting.
  from hcl_jax.data import pipeline
  monkeypatch.setattr(pipeline.aug, "train_view",
                      lambda image, *a, size, **k: pipeline.tf.zeros((size, size, 3)))
  train = set(digits_lib.split_indices()["train"].tolist())
  config.batch_size = 128
  per_host = []
  for p in range(2):
    data = make_pretrain_dataset(config, process_index=p, process_count=2)
    epoch = _take(data.dataset, data.steps_per_epoch)  # 718 per host: 11 batches of 64
    per_host.append(np.concatenate([b["label"] for b in epoch]))
  for seen in per_host:
    assert len(seen) == 11 * 64 and len(set(seen)) == len(seen)  # no repeat in an epoch
    assert set(seen) <= train
  assert not set(per_host[0]) & set(per_host[1])


def test_eval_hosts_read_disjoint_examples(config, index_as_label):
  # The padding/mask test above counts 360 real rows; overlapping hosts would
  # pass it as long as each read half as many. The real rows must be the test
  # split, each example on exactly one host.
  real = []
  for p in range(2):
    for b in _take(make_eval_dataset(config, split="test", augment=False, batch_size=64,
                                     process_index=p, process_count=2), 100):
      real.append(b["label"][b["mask"]])
  real = np.concatenate(real)
  assert sorted(real.tolist()) == sorted(digits_lib.split_indices()["test"].tolist())


# ------------------------------------------------------- mocked TFDS data

_MOCK_N = support.MOCK_EXAMPLES


@pytest.mark.parametrize("name,image_side", [("cifar10", 32), ("stl10", 96)])
def test_mocked_tfds_pipelines(tmp_path, name, image_side):
  # Without internet TFDS has no split metadata for cifar10/stl10, so the test
  # writes it; mock_data yields _MOCK_N examples for any split, hence STL-10's
  # train and unlabelled are declared _MOCK_N / 2 each (their sum is read).
  sizes = ({"train": _MOCK_N, "test": _MOCK_N} if name == "cifar10" else
           {"train": _MOCK_N // 2, "unlabelled": _MOCK_N // 2, "test": _MOCK_N})
  support.write_mock_metadata(str(tmp_path), name, sizes)
  config = _base_config()
  config.dataset, config.data_dir, config.batch_size = name, str(tmp_path), 8
  config.image_size = 32  # the paper's resolution for every dataset
  with tfds.testing.mock_data(num_examples=_MOCK_N, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    data = make_pretrain_dataset(config)
    assert (data.steps_per_epoch, data.num_examples) == (_MOCK_N // 8, _MOCK_N)
    batches = _take(data.dataset, 6)
    resumed = _take(make_pretrain_dataset(config, start_step=3).dataset, 3)
    resized = _take(make_eval_dataset(config, split="test", augment=False, batch_size=12), 10)
    # The published test_transform: no resize (STL-10 at 96x96), as the paper configs set.
    config.eval.image_size = image_side
    test = _take(make_eval_dataset(config, split="test", augment=False, batch_size=12), 10)
    bank = _take(make_eval_dataset(config, split="train", augment=False, batch_size=12), 1)
    readout_train = _take(make_eval_dataset(config, split="train", augment=True,
                                            batch_size=12), 1)
    raw = next(iter(tfds.load(name, split="test", data_dir=str(tmp_path), download=False,
                              shuffle_files=False).batch(12).as_numpy_iterator()))["image"]
  _assert_batches_equal(batches[3:], resumed)
  assert batches[0]["view1"].shape == (8, 32, 32, 3)
  assert np.all(np.any(batches[0]["view1"] != batches[0]["view2"], axis=(1, 2, 3)))
  assert len(test) == 3 and sum(b["mask"].sum() for b in test) == _MOCK_N
  assert resized[0]["image"].shape == (12, 32, 32, 3)       # eval.image_size 0: image_size
  assert test[0]["image"].shape == (12, image_side, image_side, 3)
  assert bank[0]["image"].shape == (12, image_side, image_side, 3)
  assert readout_train[0]["image"].shape == (12, 32, 32, 3)  # training crops stay 32
  # Unresized: exactly (raw / 255 - mean) / std of the stored image.
  mean, std = np.array(config.data.mean), np.array(config.data.std)
  np.testing.assert_allclose(test[0]["image"], (raw / 255.0 - mean) / std, atol=1e-5)
  # The source images themselves are at the dataset's side (STL-10: 96 px).
  assert raw.shape[1:] == (image_side, image_side, 3)


# ---------------------------------------------------- missing / bad input


def test_missing_dataset_fails_fast(tmp_path):
  config = _base_config()
  config.dataset, config.data_dir = "cifar100", str(tmp_path / "empty")
  start = time.monotonic()
  with pytest.raises(DatasetNotPreparedError, match="tfds build cifar100") as error:
    make_pretrain_dataset(config)
  assert time.monotonic() - start < 10
  assert "config.data_dir" in str(error.value) and "gs://" in str(error.value)
  config.dataset = "imagenet"
  with pytest.raises(ValueError, match="dataset='imagenet'"):
    make_pretrain_dataset(config)


# ------------------------------------------------------------ global arrays


def test_global_batches_on_8_devices(config):
  assert jax.device_count() == 8
  mesh = mesh_lib.make_mesh()
  config.batch_size = 16
  local = _take(make_pretrain_dataset(config).dataset, 3)
  got = list(itertools.islice(global_batches(make_pretrain_dataset(config).dataset, mesh), 3))
  for host, arrays in zip(local, got):
    for k, value in arrays.items():
      assert value.sharding == mesh_lib.batch_sharding(mesh)
      assert len(value.addressable_shards) == 8
      for shard in value.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), host[k][shard.index])
        assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(value), host[k])
  # Finite input ends the iterator; errors reach the consumer.
  assert len(list(global_batches([{"x": np.zeros((8, 2))}] * 3, mesh, prefetch=2))) == 3
  with pytest.raises(ValueError, match="multiple of"):
    list(global_batches([{"x": np.zeros((4, 2))}], mesh))


# ------------------------------------------------------------ damaged shards


def _fresh_digits(tmp_path):
  """A digits folder of this test's own (damage must not reach other tests)."""
  config = _base_config()
  config.data_dir, config.image_size, config.batch_size = str(tmp_path), 8, 256
  builder = digits_lib.digits_builder(config.data_dir, 8)
  shard = {name: os.fspath(split.filepaths[0]) for name, split in builder.info.splits.items()}
  return config, shard


def _flip_middle(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _truncate_half(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("damage,named", [
    (_flip_middle, "unreadable TFRecord shard"),
    # Cut inside a record: a read error; at a boundary: a short count.
    (_truncate_half, "unreadable TFRecord shard|holds"),
    (os.remove, "shard file missing"),
])
def test_damaged_shard_is_one_line_naming_the_file_before_pretraining(tmp_path, split, damage,
                                                                      named):
  """The test split's damage too: found when the pre-training data is made,
  not after the pre-training."""
  config, shard = _fresh_digits(tmp_path)
  sources._checked_dirs.clear()
  damage(shard[split])
  with pytest.raises(sources.CorruptDataError) as error:
    make_pretrain_dataset(config)
  message = str(error.value)
  assert any(message.startswith(f"{shard[split]}: {n}") for n in named.split("|")), message
  assert "\n" not in message and "function_node" not in message


def test_shard_with_fewer_records_than_its_metadata_is_named(tmp_path):
  """Cut at a record boundary, a TFRecord file reads without error: the
  count recorded in dataset_info.json finds it."""
  import tensorflow as tf
  config, shard = _fresh_digits(tmp_path)
  sources._checked_dirs.clear()
  records = list(tf.data.TFRecordDataset(shard["test"]).as_numpy_iterator())
  with tf.io.TFRecordWriter(shard["test"]) as writer:
    for record in records[:-1]:
      writer.write(record)
  with pytest.raises(sources.CorruptDataError,
                     match=f"holds {len(records) - 1} records, its dataset_info.json says "
                           f"{len(records)}"):
    make_pretrain_dataset(config)


def test_not_prepared_dataset_is_one_line_through_the_entry_point(tmp_path, capsys):
  """DatasetNotPreparedError is an OSError without strerror: one line, exit 1."""
  from hcl_jax.run import errors as run_errors
  with pytest.raises(SystemExit) as exit_info:
    with run_errors.one_line_errors(str(tmp_path)):
      raise DatasetNotPreparedError(sources.not_prepared_message("cifar10", "/x", "/x/cifar10"))
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: TFDS dataset 'cifar10' is not prepared under data_dir='/x' (looked for "
                 "/x/cifar10), and hcl_jax never downloads it."]
