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


def single_process_env(**extra: str) -> dict[str, str]:
  """This process's environment for a command-line run in a subprocess: a
  single process (no multi-process runtime settings from the caller), the
  checkout first on the path, JAX on the CPU, plus ``extra``. XLA_FLAGS is
  kept: the same 8 CPU devices as in-process."""
  env = dict(os.environ)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAX_LOCAL_DEVICE_IDS"):
    env.pop(name, None)
  env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.update(extra)
  return env


def digits_config():
  """A fresh configs/digits.py config (configs/ is loaded by path, not imported)."""
  return runpy.run_path(os.path.join(_ROOT, "configs", "digits.py"))["get_config"]()


def tiny_model(*, stem: str = "cifar", dtype=None):
  """The tests' small model: a ResNet of two one-block stages (4 and 8 channels) and the head.

  It keeps what the tests check through a real model, at a fraction of the
  compile time of even a narrow ResNet-18: BatchNorm in the stem, the blocks
  and the head, and a strided block with a projection shortcut. ``dtype``:
  the compute dtype (float32 by default).
  """
  import jax.numpy as jnp
  from hcl_jax import models
  dtype = jnp.float32 if dtype is None else dtype
  return models.ContrastiveModel(
      encoder=models.ResNet(stage_sizes=(1, 1), block_cls=models.BasicBlock, base_width=4,
                            stem=stem, dtype=dtype),
      head=models.ProjectionHead(hidden_dim=16, out_dim=8, dtype=dtype))


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
  from hcl_jax.evaluation import protocol as evaluate
  monkeypatch.setattr(evaluate, "evaluate_encoder", lambda *a, **k: dict(FAKE_EVAL))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """digits at DIGITS_TEST_SIDE px, built once per module (and its subprocesses)."""
  from hcl_jax.data import digits as digits_lib
  path = str(tmp_path_factory.mktemp("tfds"))
  digits_lib.digits_builder(path, DIGITS_TEST_SIDE)
  return path


def collect_processes(procs, *, timeout_s: float) -> list[str]:
  """Each process's combined output once all have ended, within ``timeout_s``.

  Past the bound the test fails with every process's Python stacks and output:
  live processes get SIGUSR1 (workers register ``faulthandler`` on it), then
  are killed; a hang is never silent. ``procs``: ``subprocess.Popen`` with
  ``stdout=PIPE, stderr=STDOUT, text=True``.
  """
  import signal
  import subprocess
  import time

  deadline = time.monotonic() + timeout_s
  outputs = []
  try:
    for proc in procs:
      try:
        outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
      except subprocess.TimeoutExpired:
        for p in procs:
          if p.poll() is None:
            p.send_signal(signal.SIGUSR1)
        time.sleep(3.0)  # the dump is written by the process itself
        for p in procs:
          p.kill()
        pytest.fail(f"{len(procs)}-process run exceeded {timeout_s:.0f} s; each process's "
                    "output and Python stacks:\n" + "\n---\n".join(
                        f"process {i}:\n{p.communicate()[0][-8000:]}"
                        for i, p in enumerate(procs)))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return outputs
