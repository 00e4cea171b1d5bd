"""The training run: pre-train, checkpoint, resume, log, then evaluate.

  python -m hcl_jax.main --config configs/digits.py --workdir workdirs/digits \
      [--config.loss.beta=2.0 ...]

Everything the run writes goes to ``--workdir``: ``checkpoints/`` (orbax, the
last ``keep_checkpoints``), ``metrics.jsonl``, TensorBoard events,
``config.json`` and, at the end, ``results.json`` with the linear readout and
kNN accuracies (in %) of the trained encoder and of the same encoder at its
random initialisation. Started again with the same workdir, the run resumes
from its latest readable checkpoint (state, step, data position and RNG) and
ends exactly as a run that went straight through; SIGTERM (a TPU preemption)
saves and exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# Before anything touches a JAX backend: its flags must exist when absl parses.
from hcl_jax import distributed  # noqa: F401  (defines --coordinator_address etc.)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")

DATASETS = ("digits", "cifar10", "cifar100", "stl10")


def _positive_int(config: Any, key: str, minimum: int = 1) -> None:
  value = config
  for part in key.split("."):
    value = value.get(part) if value is not None else None
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config.{key} must be an int >= {minimum}; got {value!r}.")


def validate_run_config(config: Any, num_devices: int) -> None:
  """Every check that needs no data and no compilation; ValueError naming the key."""
  # Imported here so that `--help` and config errors come before TF/JAX start.
  from hcl_jax import train_step as train_step_lib

  if config.get("dataset") not in DATASETS:
    raise ValueError(f"config.dataset must be one of {DATASETS}; got {config.get('dataset')!r}.")
  if not isinstance(config.get("data_dir"), str) or not config.data_dir:
    raise ValueError(f"config.data_dir must be a non-empty path; got {config.get('data_dir')!r}.")
  train_step_lib.validate_config(config)
  if config.batch_size % num_devices:
    raise ValueError(
        f"config.batch_size={config.batch_size} must be a multiple of the number of devices "
        f"({num_devices}).")
  for key in ("image_size", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
              "eval.knn_k", "eval.linear_epochs", "eval.linear_batch_size"):
    _positive_int(config, key)
  _positive_int(config, "seed", minimum=0)
  from hcl_jax import evaluate, models
  if config.eval.readout not in evaluate.READOUTS:
    raise ValueError(
        f"config.eval.readout must be one of {evaluate.READOUTS}; got {config.eval.readout!r}.")
  if "image_size" in config.eval:
    _positive_int(config, "eval.image_size", minimum=0)
  models.validate_bn_group_size(config.model, config.batch_size)
  _check_augment_blur(config.augment)


def _check_augment_blur(augment: Any) -> None:
  size = augment.get("blur_kernel_size", 1)
  if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
    raise ValueError(f"config.augment.blur_kernel_size must be an odd int >= 1 (1: no blur); "
                     f"got {size!r}.")
  prob = augment.get("blur_prob", 0.5)
  if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
    raise ValueError(f"config.augment.blur_prob must be in [0, 1]; got {prob!r}.")
  sigma = tuple(augment.get("blur_sigma", (0.1, 2.0)))
  if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
    raise ValueError(f"config.augment.blur_sigma must be (low, high) with 0 < low <= high; "
                     f"got {sigma!r}.")


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole experiment; returns what results.json holds."""
  import jax

  from hcl_jax import data as data_lib
  from hcl_jax import evaluate
  from hcl_jax import models
  from hcl_jax import train_step as train_step_lib
  from hcl_jax.checkpointing import Checkpointer, rng_from_list, rng_to_list
  from hcl_jax.mesh import make_mesh
  from hcl_jax.metrics_log import MetricLogger
  from hcl_jax.preemption import PreemptionGuard

  start_time = time.time()
  mesh = make_mesh()
  validate_run_config(config, mesh.size)
  is_main = jax.process_index() == 0
  model = models.create_model(config)
  image_shape = (config.image_size, config.image_size, 3)
  init_rng = jax.random.key(config.seed)
  # The schedule inside the optimizer state does not depend on steps_per_epoch.
  state = train_step_lib.create_train_state(config, model, init_rng, mesh, image_shape)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                      save_every_steps=config.checkpoint_every_steps)
  start_step, rng = 0, jax.random.fold_in(init_rng, 1)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    start_step, state, extra = restored
    rng = rng_from_list(extra["rng"])
    if extra["data_step"] != start_step:
      raise RuntimeError(f"checkpoint {start_step} has data position {extra['data_step']}.")
  if start_step:
    print(f"Resuming from checkpoint {start_step} in {workdir}.", flush=True)

  data = data_lib.make_pretrain_dataset(config, start_step=start_step)
  total_steps = config.num_epochs * data.steps_per_epoch
  train_step = train_step_lib.make_train_step(config, mesh, data.steps_per_epoch, model)
  logger = MetricLogger(workdir, total_steps=total_steps, config=config, start_step=start_step,
                        batch_size=config.batch_size, is_main_process=is_main)
  if start_step == 0:
    logger.write(f"Training {config.model.name} with {config.loss.name} on {config.dataset}: "
                 f"{config.num_epochs} epochs x {data.steps_per_epoch} steps of "
                 f"{config.batch_size} images on {mesh.size} device(s).")

  step, stopped = start_step, False
  batches = data_lib.global_batches(data.dataset.as_numpy_iterator(), mesh)
  with PreemptionGuard() as guard:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches))
      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["epoch"] = (step - 1) // data.steps_per_epoch + 1
        logger.log(step, metrics)
      stopped = guard.should_stop_at(step)
      # The train step draws no randomness of its own (the data pipeline's is
      # seeded by step), but the RNG is saved so that features that do resume.
      ckpt.maybe_save(step, state, {"data_step": step, "rng": rng_to_list(rng)},
                      force=stopped or step == total_steps)
      if stopped:
        logger.write(f"{guard.signal_name} received: checkpoint {step} saved, exiting.")
        break
  ckpt.close()
  if stopped:
    logger.close()
    return {"stopped_at_step": step}

  logger.write("Pre-training done; evaluating the encoder (linear readout and kNN).")
  trained = evaluate.evaluate_encoder(config, model, state, mesh)
  initial = evaluate.evaluate_encoder(
      config, model, train_step_lib.create_train_state(config, model, init_rng, mesh, image_shape),
      mesh)
  results = {
      **trained,
      "random_init": initial,
      "dataset": config.dataset,
      "loss": config.loss.name,
      "seed": config.seed,
      "steps": total_steps,
      "wall_time_s": round(time.time() - start_time, 1),
  }
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  logger.write(
      f"Linear readout top-1: {trained['linear_top1']:.2f}% trained vs "
      f"{initial['linear_top1']:.2f}% at random initialisation; kNN top-1: "
      f"{trained['knn_top1']:.2f}% vs {initial['knn_top1']:.2f}%.")
  logger.close()
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")
  from hcl_jax import distributed as distributed_lib

  if not flags.FLAGS["verbosity"].present:
    # orbax and TFDS log every file they touch at INFO: keep the terminal for
    # the progress display (pass --verbosity=0 to see them).
    logging.set_verbosity(logging.WARNING)
  distributed_lib.initialize_distributed()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    # Config and data errors: one clear line, not a traceback.
    logging.error("%s", e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
