"""Host input pipelines: two-view pre-training batches and readout batches.

Pre-training::

  data = make_pretrain_dataset(config, start_step=step)
  for batch in global_batches(data.dataset, mesh):   # see global_arrays.py
    ...  # batch["view1"], batch["view2"]: float32 [B, S, S, 3]; batch["label"]: int64 [B]

``data.dataset`` yields host-local numpy batches, forever:
{"view1", "view2": float32 [b, S, S, 3], "label": int64 [b]} with b =
config.batch_size / process_count and S = config.image_size. "label" is for
monitoring only (-1 for STL-10's unlabelled images).

The same global batches whatever the number of processes. Epoch e shuffles
the whole split with a seed derived from (config.seed, e); its first
steps_per_epoch * B examples are used (drop remainder; B = config.batch_size,
steps_per_epoch = examples // B). Global batch s of the epoch is positions
[s * B, (s + 1) * B); process i keeps its rows [i * b, (i + 1) * b) of each
(every process reads the split, and skips the others' rows before
augmenting them). The example at position p of epoch e gets views augmented
with seeds derived from (config.seed, e, p, view). So 2 processes x 4
devices train on exactly the batches of 1 process x 8, and step s is batch
s % steps_per_epoch of epoch s // steps_per_epoch, whatever step the run
started at: ``start_step=k`` yields exactly the batches a run started at 0
yields from step k on (the skipped examples are read but not augmented).
The shuffle uses tf.data's seeded shuffle with a buffer of
min(config.data.shuffle_buffer, examples); a buffer at least that size is a
uniform shuffle. Don't call ``tf.random.set_seed``: it changes the streams.

Readout and kNN::

  ds = make_eval_dataset(config, split="test", augment=False)

yields one pass of {"image": float32 [b, S, S, 3], "label": int64 [b],
"mask": bool [b]}, S = ``eval_image_size(config)`` unaugmented (the
published ``test_transform`` has no resize: STL-10 is evaluated at 96x96, the
encoder pools globally) and config.image_size augmented (the training crop):
every example of the host's part exactly once, in order
(or shuffled for ``shuffle=True``), then zero images with mask False and
label -1 to fill the last batch; all hosts yield the same number of batches.

Normalisation: config.data.mean / config.data.std, by default CIFAR-10's
statistics for every dataset, as in the published code (docs/reference.md).

``config`` is a complete config (``hcl_jax.config.check.validate`` fills an
older config's missing keys from the schema): every key is read directly.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from hcl_jax.config import registry
from hcl_jax.data import augment as aug
from hcl_jax.data import sources
from hcl_jax.data._tf import tf

# Stream ids folded into config.seed, so shuffles, pre-training views and
# readout views never share random numbers.
_SHUFFLE, _PRETRAIN, _EVAL = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class PretrainData:
  """The pre-training input and the sizes the training loop needs.

  dataset: host-local numpy batches (see module docstring), infinite,
    starting at the requested start_step.
  steps_per_epoch: batches per epoch (same on every host).
  num_examples: images in the whole pre-training split (all hosts).
  image_shape: (S, S, 3).
  local_batch_size: config.batch_size // process_count.
  """
  dataset: tf.data.Dataset
  steps_per_epoch: int
  num_examples: int
  image_shape: tuple[int, int, int]
  local_batch_size: int


def eval_image_size(config) -> int:
  """Side of unaugmented evaluation images: config.eval.image_size, 0 -> image_size."""
  return int(config.eval.image_size) or int(config.image_size)


def _processes(process_index, process_count) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_index={index!r}, process_count={count!r}: need "
                     "0 <= index < count.")
  return index, count


def _local_batch(batch_size: int, process_count: int) -> int:
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size!r}: must be a positive multiple of "
                     f"process_count={process_count}.")
  return batch_size // process_count


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  threads = int(config.data.threadpool_size)
  if threads > 0:
    options.threading.private_threadpool_size = threads
  # Parallelism comes from parallel map calls; one thread per op avoids
  # oversubscription.
  options.threading.max_intra_op_parallelism = 1
  return options


def _parallel_calls(config) -> int:
  calls = int(config.data.num_parallel_calls)
  if calls == -1:
    return tf.data.AUTOTUNE
  if calls < 1:
    raise ValueError(f"data.num_parallel_calls={calls!r}: must be -1 (autotune) or >= 1.")
  return calls


def _key(*parts) -> tf.Tensor:
  """A [2] stateless seed from config.seed and stream/process/epoch/position ints."""
  seed = tf.constant([parts[0], 0], tf.int64)
  for part in parts[1:]:
    seed = aug.fold_in(seed, part)
  return seed


def _shuffle_seed(*parts) -> tf.Tensor:
  """An int64 scalar op seed for Dataset.shuffle, from the same parts as _key."""
  key = tf.cast(_key(*parts), tf.int64)
  return key[0] * 2_147_483_648 + key[1]


def _steps_per_epoch(config, num_examples: int, spec: registry.Dataset) -> int:
  steps = num_examples // config.batch_size
  if steps < 1:
    raise ValueError(
        f"batch_size={config.batch_size!r}: larger than the {num_examples} "
        f"examples of {config.dataset!r}/{spec.pretrain_split}.")
  return steps


def pretrain_steps_per_epoch(config) -> int:
  """Pre-training batches per epoch: the split's examples // config.batch_size.

  What ``make_pretrain_dataset(config).steps_per_epoch`` is, without building
  the pipeline: the optimizer's schedule needs it before the run knows the
  step it resumes from.
  """
  spec = sources.get_spec(config.dataset)
  num_examples = sources.num_examples(sources.load_builder(config), spec.pretrain_split)
  return _steps_per_epoch(config, num_examples, spec)


def make_pretrain_dataset(config, *, start_step: int = 0, process_index: int | None = None,
                          process_count: int | None = None) -> PretrainData:
  """Two-view pre-training batches for this process, from ``start_step`` on.

  Args:
    config: the run config (configs/digits.py): dataset, data_dir, image_size,
      batch_size (global), seed, augment.*, data.*.
    start_step: the global step of the first batch (resume).
    process_index, process_count: default jax.process_index()/process_count().

  Returns:
    PretrainData (see its docstring and the module docstring).
  """
  index, count = _processes(process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step!r}: must be >= 0.")
  spec = sources.get_spec(config.dataset)
  builder = sources.load_builder(config)
  local_batch = _local_batch(config.batch_size, count)
  global_batch = local_batch * count
  num_examples = sources.num_examples(builder, spec.pretrain_split)
  steps_per_epoch = _steps_per_epoch(config, num_examples, spec)
  size = int(config.image_size)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  buffer = max(1, min(int(config.data.shuffle_buffer), num_examples))
  seed = int(config.seed)
  examples = sources.read(builder, spec.pretrain_split)

  def epoch_examples(epoch):
    # The 0s stand where a process index was folded in; they keep the
    # single-process stream what it always was.
    ds = examples.shuffle(buffer, seed=_shuffle_seed(seed, _SHUFFLE, 0, epoch),
                          reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch * global_batch).enumerate()
    if count > 1:
      ds = ds.filter(lambda position, ex: (position % global_batch) // local_batch == index)
    return ds.map(lambda position, ex: (epoch, position, ex))

  def two_views(epoch, position, ex):
    key = _key(seed, _PRETRAIN, 0, epoch, position)
    views = {f"view{v}": aug.train_view(ex["image"], aug.fold_in(key, v), config.augment,
                                        size=size, mean=mean, std=std)
             for v in (1, 2)}
    return {**views, "label": ex["label"]}

  start_epoch, offset = divmod(start_step, steps_per_epoch)
  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)
  ds = ds.skip(offset * local_batch)
  ds = ds.map(two_views, num_parallel_calls=_parallel_calls(config), deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(_options(config))
  return PretrainData(dataset=ds, steps_per_epoch=steps_per_epoch,
                      num_examples=num_examples,
                      image_shape=(size, size, 3), local_batch_size=local_batch)


def make_eval_dataset(config, *, split: str, augment: bool, batch_size: int | None = None,
                      epoch: int = 0, shuffle: bool = False,
                      process_index: int | None = None,
                      process_count: int | None = None) -> tf.data.Dataset:
  """One pass over the readout ``split`` ("train" or "test") for this process.

  Args:
    config: the run config.
    split: "train" (STL-10: the 5k labelled images) or "test".
    augment: apply the pre-training transform (one view) or none.
    batch_size: global batch (default config.eval.linear_batch_size).
    epoch: varies the shuffle and augmentation between readout epochs.
    shuffle: shuffle the host's examples (seeded by config.seed and epoch).
    process_index, process_count: default jax.process_index()/process_count().

  Returns:
    Host-local numpy batches {"image": float32 [b, S, S, 3], "label": int64
    [b], "mask": bool [b]}, b = batch_size / process_count; see the module
    docstring for padding.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r}: expected 'train' or 'test'.")
  index, count = _processes(process_index, process_count)
  spec = sources.get_spec(config.dataset)
  builder = sources.load_builder(config)
  if batch_size is None:
    batch_size = int(config.eval.linear_batch_size)
  local_batch = _local_batch(batch_size, count)
  tfds_split = spec.train_split if split == "train" else spec.test_split
  per_host = [sources.num_examples(
      builder, sources.host_split(tfds_split, p, count, drop_remainder=False))
              for p in range(count)]
  num_batches = math.ceil(max(per_host) / local_batch)
  padding = num_batches * local_batch - per_host[index]
  train_size = int(config.image_size)
  size = train_size if augment else eval_image_size(config)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  seed = int(config.seed)

  ds = sources.read(builder, sources.host_split(tfds_split, index, count,
                                                drop_remainder=False))
  if shuffle:
    buffer = max(1, min(int(config.data.shuffle_buffer), per_host[index]))
    ds = ds.shuffle(buffer, seed=_shuffle_seed(seed, _EVAL, index, epoch),
                    reshuffle_each_iteration=False)

  def transform(position, ex):
    if augment:
      image = aug.train_view(ex["image"], _key(seed, _EVAL, index, epoch, position),
                             config.augment, size=train_size, mean=mean, std=std)
    else:
      image = aug.eval_view(ex["image"], size=size, mean=mean, std=std)
    return {"image": image, "label": ex["label"], "mask": tf.constant(True)}

  ds = ds.enumerate().map(transform, num_parallel_calls=_parallel_calls(config),
                          deterministic=True)
  pad = {"image": tf.zeros((size, size, 3), tf.float32),
         "label": tf.constant(-1, tf.int64), "mask": tf.constant(False)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(padding))
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(config))
