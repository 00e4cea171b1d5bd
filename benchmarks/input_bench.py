"""Two-view augmented images per second of the pre-training input pipeline.

Runs make_pretrain_dataset on the embedded digits dataset at 32x32 (the same
per-image work as CIFAR-10), with the pipeline's parallelism at 1 and at all
cores (config.data.num_parallel_calls and the tf.data private threadpool),
and prints a table. One "image" = one source image turned into two views.
Each setting runs without and with the published Gaussian blur (3x3 kernel,
p = 0.5: ``augment.blur_kernel_size`` 1 vs 3), alternating ``--rounds``
times, so the two are measured side by side on a shared machine; the ratio
is the median over rounds of blur / no-blur images/s.

  .venv/bin/python benchmarks/input_bench.py [--batches 20] [--batch_size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from hcl_jax.data import make_pretrain_dataset  # noqa: E402


def _config(data_dir: str, batch_size: int, threads: int, blur_kernel_size: int = 1):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(_ROOT, "configs", "digits.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data_dir, config.batch_size, config.image_size = data_dir, batch_size, 32
  config.data.num_parallel_calls = threads
  config.data.threadpool_size = threads
  config.augment.blur_kernel_size = blur_kernel_size
  return config


def images_per_second(config, batches: int, warmup: int = 2) -> float:
  iterator = make_pretrain_dataset(config).dataset.as_numpy_iterator()
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.batch_size / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--data_dir", default=os.path.join(_ROOT, "data"))
  args = parser.parse_args()
  cores = os.cpu_count() or 1
  rows = []
  for threads in sorted({1, cores}):
    rates = {1: [], 3: []}
    for _ in range(args.rounds):
      for kernel in (1, 3):   # alternate: both see the same machine load
        config = _config(args.data_dir, args.batch_size, threads, kernel)
        rates[kernel].append(images_per_second(config, args.batches))
    ratio = statistics.median(b / a for a, b in zip(rates[1], rates[3]))
    rows.append((threads, statistics.median(rates[1]), statistics.median(rates[3]), ratio))
  print(f"\ntwo-view images/s, 32x32, batch {args.batch_size}, {args.batches} batches, "
        f"{cores} cores visible, median of {args.rounds} alternating rounds")
  print(f"{'parallelism':>12} | {'no blur':>10} | {'blur 3x3':>10} | {'blur / no blur':>14}")
  for threads, plain, blur, ratio in rows:
    print(f"{threads:>12} | {plain:>10.0f} | {blur:>10.0f} | {ratio:>14.3f}")


if __name__ == "__main__":
  main()
