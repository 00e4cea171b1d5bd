"""Two-view augmented images per second of the pre-training input pipeline.

Runs make_pretrain_dataset on the embedded digits dataset at 32x32 (the same
per-image work as CIFAR-10), with the pipeline's parallelism at 1 and at all
cores (config.data.num_parallel_calls and the tf.data private threadpool),
and prints a table. One "image" = one source image turned into two views.
Each setting runs without and with the published Gaussian blur (3x3 kernel,
p = 0.5: ``augment.blur_kernel_size`` 1 vs 3), alternating ``--rounds``
times, so the two are measured side by side on a shared machine; the ratio
is the median over rounds of blur / no-blur images/s, per wall second and
per CPU second of the benchmark process.

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


def images_per_second(config, batches: int, warmup: int = 2) -> tuple[float, float]:
  """(images per wall second, images per CPU second of this process).

  The second is what the pipeline would reach with the cores to itself: on a
  shared machine it is the steadier figure (other processes' load changes
  the wall time, much less the CPU time per image).
  """
  iterator = make_pretrain_dataset(config).dataset.as_numpy_iterator()
  for _ in range(warmup):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  images = batches * config.batch_size
  return (images / (time.perf_counter() - start),
          images / (time.process_time() - cpu_start))


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
    med = lambda kernel, k: statistics.median(r[k] for r in rates[kernel])
    ratio = lambda k: statistics.median(b[k] / a[k] for a, b in zip(rates[1], rates[3]))
    rows.append((threads, med(1, 0), med(3, 0), ratio(0), med(1, 1), med(3, 1), ratio(1)))
  print(f"\ntwo-view images/s, 32x32, batch {args.batch_size}, {args.batches} batches, "
        f"{cores} cores visible, medians of {args.rounds} alternating rounds "
        "(ratio: median of the per-round ratios)")
  print(f"{'parallelism':>11} | {'wall: no blur':>13} | {'blur 3x3':>8} | {'ratio':>5} | "
        f"{'per CPU-s: no blur':>18} | {'blur 3x3':>8} | {'ratio':>5}")
  for threads, p_w, b_w, r_w, p_c, b_c, r_c in rows:
    print(f"{threads:>11} | {p_w:>13.0f} | {b_w:>8.0f} | {r_w:>5.3f} | {p_c:>18.0f} | "
          f"{b_c:>8.0f} | {r_c:>5.3f}")


if __name__ == "__main__":
  main()
