"""Two-view images per second of the pre-training input pipeline, per host core.

For the paper's datasets (configs/paper.py: ResNet-50 inputs of 32x32 for
every dataset, the published 3x3 Gaussian blur): ``cifar10`` (32x32 source
images) and ``stl10`` (96x96 source images from train+unlabelled, decoded,
then cropped and resized to 32x32). One "image" = one source image read,
decoded and turned into two augmented views (``make_pretrain_dataset``,
unchanged: this measures the pipeline the run uses).

The data: generated records in TFDS's own format (the dataset's
``features.encode_example``, PNG-encoded images, one TFRecord shard per
split, ``dataset_info.json`` with the split sizes), written once into
``--data_dir`` (default: a temporary folder). The images are smooth
gradients with noise, so their PNGs are about as large as natural images'
(pure noise would not compress and decode slower). Nothing is downloaded.

Each measurement runs in a subprocess pinned to ``--cores`` CPU cores
(``os.sched_setaffinity``), with tf.data's private threadpool and the map's
parallel calls set to that many. Reported: images per wall second, per
wall second per core, and per CPU second of the process (steadier on a
shared machine: other processes' load changes the wall time, much less the
CPU time per image). ``--variants`` splits the cost: ``full`` (the run's
pipeline), ``no_blur`` (blur_kernel_size 1), ``decode_only`` (read, decode
and batch the source images; no augmentation).

  .venv/bin/python benchmarks/input_bench.py [--datasets cifar10,stl10] [--cores 1,2]
      [--variants full,no_blur,decode_only] [--batches 12] [--batch_size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Distinct images per split: the pipeline reads and decodes every record, so
# repeats cost the same as new images; the shuffle buffer only needs some.
_EXAMPLES = {"cifar10": {"train": 2048, "test": 256},
             "stl10": {"train": 1024, "unlabelled": 2048, "test": 256}}
_DISTINCT = 64
VARIANTS = ("full", "no_blur", "decode_only")


def _smooth_images(count: int, side: int, seed: int = 0):
  """uint8 [count, side, side, 3]: random low-frequency colour fields plus noise."""
  import numpy as np
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (count, 4, 4, 3))
  scale = side // 4
  smooth = np.repeat(np.repeat(coarse, scale, axis=1), scale, axis=2)
  noisy = smooth + rng.normal(0, 12, smooth.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def write_generated_dataset(data_dir: str, name: str) -> None:
  """A prepared TFDS ``name`` in ``data_dir`` with generated images (see module doc)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  features = builder.info.features
  side = features["image"].shape[0]
  serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
  images = _smooth_images(_DISTINCT, side)
  os.makedirs(builder.data_dir, exist_ok=True)
  splits = []
  for split, count in _EXAMPLES[name].items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, split=split, filetype_suffix="tfrecord")
    encoded = [serializer.serialize_example(features.encode_example(
        {"image": images[i], "label": i % 10, **({"id": f"{split}_{i}"} if "id" in features else {})}))
        for i in range(_DISTINCT)]
    with tf.io.TFRecordWriter(os.fspath(template.sharded_filepath(shard_index=0, num_shards=1))) as w:
      for i in range(count):
        w.write(encoded[i % _DISTINCT])
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)


def paper_config(dataset: str, data_dir: str, *, batch_size: int, cores: int, variant: str):
  from hcl_jax.config import check as config_check
  config = config_check.load(f"configs/paper.py:dataset={dataset},method=hcl")
  config.data_dir, config.batch_size = data_dir, batch_size
  config.model.bn_group_size = 0   # the model's; any batch size is fine for the pipeline
  config.data.num_parallel_calls = cores
  config.data.threadpool_size = cores
  if variant == "no_blur":
    config.augment.blur_kernel_size = 1
  return config_check.validate(config)


def _dataset(config, variant: str):
  if variant != "decode_only":
    from hcl_jax.data import make_pretrain_dataset
    return make_pretrain_dataset(config).dataset
  from hcl_jax.data import pipeline, sources
  spec = sources.get_spec(config.dataset)
  ds = sources.read(sources.load_builder(config), spec.pretrain_split).repeat()
  ds = ds.map(lambda ex: ex["image"], num_parallel_calls=config.data.num_parallel_calls)
  return ds.batch(config.batch_size).prefetch(2).with_options(pipeline._options(config))


def measure(dataset: str, data_dir: str, *, batch_size: int, cores: int, variant: str,
            batches: int, warmup: int = 3) -> dict:
  """One measurement in this process (call it in a fresh process: pinning)."""
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
  config = paper_config(dataset, data_dir, batch_size=batch_size, cores=cores, variant=variant)
  iterator = _dataset(config, variant).as_numpy_iterator()
  for _ in range(warmup):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  images = batches * batch_size
  return {"wall": images / wall, "cpu": images / cpu}


def _measure_in_subprocess(dataset, data_dir, args, cores, variant) -> dict:
  spec = json.dumps({"dataset": dataset, "data_dir": data_dir, "batch_size": args.batch_size,
                     "cores": cores, "variant": variant, "batches": args.batches})
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  done = subprocess.run([sys.executable, __file__, "--_measure", spec], cwd=_ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  if done.returncode:
    raise SystemExit(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run_table(args) -> list[dict]:
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="hcl_jax_input_bench_")
  for dataset in args.datasets:
    write_generated_dataset(data_dir, dataset)
  rows = []
  for dataset in args.datasets:
    for cores in args.cores:
      rates = {v: [] for v in args.variants}
      for _ in range(args.rounds):
        for variant in args.variants:   # alternate: every variant sees the same load
          rate = _measure_in_subprocess(dataset, data_dir, args, cores, variant)
          rates[variant].append(rate)
          print(f"{dataset} {cores} core(s) {variant}: {rate['wall']:.0f} img/s, "
                f"{rate['cpu']:.0f} per CPU-s", file=sys.stderr, flush=True)
      for variant in args.variants:
        wall = statistics.median(r["wall"] for r in rates[variant])
        cpu = statistics.median(r["cpu"] for r in rates[variant])
        rows.append({"dataset": dataset, "cores": cores, "variant": variant, "wall": wall,
                     "wall_per_core": wall / cores, "cpu": cpu})
  return rows


def print_table(rows: list[dict], args) -> None:
  print(f"\ntwo-view images/s of the pre-training pipeline (paper config: 32x32 crops, "
        f"blur 3x3), batch {args.batch_size}, {args.batches} batches, medians of "
        f"{args.rounds} alternating rounds; {os.cpu_count()} cores on this machine")
  print("| dataset (source side) | cores | variant | images/s | images/s per core | "
        "images per CPU-s |")
  print("|---|---|---|---|---|---|")
  sides = {"cifar10": 32, "cifar100": 32, "stl10": 96}
  for r in rows:
    print(f"| {r['dataset']} ({sides.get(r['dataset'], '?')} px) | {r['cores']} | "
          f"{r['variant']} | {r['wall']:.0f} | {r['wall_per_core']:.0f} | {r['cpu']:.0f} |")


def _int_list(text: str) -> list[int]:
  return [int(t) for t in text.split(",") if t]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="cifar10,stl10",
                      type=lambda t: [d for d in t.split(",") if d])
  parser.add_argument("--cores", default=None, type=_int_list,
                      help="comma-separated core counts (default: 1 and all)")
  parser.add_argument("--variants", default="full",
                      type=lambda t: [v for v in t.split(",") if v])
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--data_dir", default="", help="where generated datasets are written "
                      "(kept; reused when prepared); default a temporary folder")
  parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._measure:
    spec = json.loads(args._measure)
    data_dir = spec.pop("data_dir")
    print(json.dumps(measure(spec.pop("dataset"), data_dir, **spec)))
    return
  available = len(os.sched_getaffinity(0))
  args.cores = args.cores or sorted({1, available})
  bad = [c for c in args.cores if not 1 <= c <= available]
  if bad:
    parser.error(f"--cores {bad}: this process may use 1..{available} cores")
  unknown = [v for v in args.variants if v not in VARIANTS]
  if unknown:
    parser.error(f"--variants {unknown}: choose from {', '.join(VARIANTS)}")
  unknown = [d for d in args.datasets if d not in _EXAMPLES]
  if unknown:
    parser.error(f"--datasets {unknown}: choose from {', '.join(_EXAMPLES)}")
  print_table(run_table(args), args)


if __name__ == "__main__":
  main()
