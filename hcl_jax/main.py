"""The training run: pre-train, checkpoint, resume, log, then evaluate.

  python -m hcl_jax.main --config configs/digits.py --workdir workdirs/digits \
      [--config.loss.beta=2.0 ...]

Everything the run writes goes to ``--workdir``: ``checkpoints/`` (orbax, the
last ``keep_checkpoints``), ``metrics.jsonl`` (with step time, images/s and,
on a chip in ``hcl_jax.train.throughput.PEAKS``, MFU), TensorBoard events,
``profile/`` (with ``--config.profile_steps=N,M``: ``hcl_jax.train.profiling``),
``config.json``, ``logs/process_<i>.log`` (each process's output) and, at the
end, ``results.json`` with the linear readout and kNN accuracies (in %) of the
trained encoder and of the same encoder at its random initialisation. The
workdir may be local or ``gs://...`` (``hcl_jax.run.workdir_fs``). Started again
with the same workdir, the run resumes from its latest readable checkpoint
(state, step and data position) and ends exactly as a run that went
straight through. SIGTERM (a preemption) during training saves and exits 75,
"retry" (``files.EXIT_RETRYABLE``: schedulers restart on it), Ctrl-C
(SIGINT) saves and exits 130 (a second Ctrl-C exits at once). Either signal
before or after training (start-up, evaluation) exits 75 with one line; the
rerun resumes. With several processes every process exits so, after the
same checkpoint (``hcl_jax.run.preemption``).

What the run refuses, in one line and without touching the workdir
(``hcl_jax.run.guard``): a workdir another live run holds (``run.lock``), a
config that is another experiment than the checkpoints there (pass
``--allow_config_change`` to continue deliberately), a workdir it can't
write. A non-finite loss or gradient stops it (exit 1, no results.json, no
checkpoint after the last good one), or with ``config.on_nonfinite="skip"``
drops those updates (``hcl_jax.train.divergence``).
"""

from __future__ import annotations

from typing import Any

from absl import app

# Before anything touches a JAX backend: its flags must exist when absl parses.
from hcl_jax import distributed  # noqa: F401  (defines --coordinator_address etc.)

from hcl_jax.run import entry_point  # noqa: E402  (defines --workdir)

_WORKDIR = entry_point.WORKDIR
_CONFIG, _ALLOW_CONFIG_CHANGE = entry_point.define_run_flags()

from hcl_jax.config import check as config_check  # noqa: E402  (light: no JAX)


def train_and_evaluate(config: Any, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Checks ``config`` (``config_check.validate``), then runs (or resumes) the
  whole experiment; returns what results.json holds.

  Holds ``workdir``'s lock throughout (process 0); see ``hcl_jax.run.guard``.
  """
  return _run(config_check.validate(config), workdir, allow_config_change=allow_config_change)


def _run(config: Any, workdir: str, *, allow_config_change: bool) -> dict[str, Any]:
  """:func:`train_and_evaluate` of a config ``config_check.validate`` returned."""
  import jax

  from hcl_jax.run import guard as run_guard
  from hcl_jax.distributed.mesh import make_mesh

  mesh = make_mesh()
  # The one check that needs the devices (validate ran before the backend started).
  config_check.check_batch_split(config, mesh.size)
  with run_guard.hold_workdir(workdir, is_main=jax.process_index() == 0) as lock:
    return _train_and_evaluate(config, workdir, mesh, lock,
                               allow_config_change=allow_config_change)


def _train_and_evaluate(config: Any, workdir: str, mesh: Any, lock: Any, *,
                        allow_config_change: bool) -> dict[str, Any]:
  """The image run's own part; the rest is ``hcl_jax.run.lifecycle.Run``'s."""
  import itertools

  import jax
  import jax.numpy as jnp

  from hcl_jax.distributed import compile_sync
  from hcl_jax import data as data_lib
  from hcl_jax.evaluation import protocol as evaluate
  from hcl_jax.run import lifecycle
  from hcl_jax import models
  from hcl_jax.train import divergence
  from hcl_jax.train import optim
  from hcl_jax.train import profiling
  from hcl_jax.train import throughput
  from hcl_jax.train import step as train_step_lib
  from hcl_jax.run.metrics_log import MetricLogger

  is_main = jax.process_index() == 0
  # The model and the optimizer, once per run; the state carries the optimizer.
  model = models.create_model(config)
  steps_per_epoch = data_lib.pretrain_steps_per_epoch(config)
  state = train_step_lib.create_train_state(
      model, optim.make_optimizer(config, steps_per_epoch), jax.random.key(config.seed), mesh,
      (config.image_size, config.image_size, 3))
  # The random-init encoder is evaluated at the end: a copy, since the train
  # step donates the state's buffers.
  initial_state = jax.tree.map(jnp.copy, state.replace(opt_state=()))

  run = lifecycle.Run(lifecycle.IMAGE, config, workdir, lock,
                      keep=config.keep_checkpoints,
                      save_every_steps=config.checkpoint_every_steps,
                      allow_config_change=allow_config_change, num_devices=mesh.size,
                      is_main=is_main)
  total_steps = config.num_epochs * steps_per_epoch
  restored = run.resume(state, total_steps)
  start_step = run.start_step
  if restored is not None:
    state = restored.state
    if restored.extra["data_step"] != start_step:
      raise RuntimeError(
          f"checkpoint {start_step} has data position {restored.extra['data_step']}.")
  monitor = divergence.DivergenceMonitor(config.on_nonfinite, start_step)

  data = data_lib.make_pretrain_dataset(config, start_step=start_step)
  # Compiled on every process before any of them runs it (hcl_jax.distributed.compile_sync).
  train_step = compile_sync.synced_first_call(
      train_step_lib.make_train_step(config, mesh, steps_per_epoch, model), "train_step")
  logger = MetricLogger(workdir, total_steps=total_steps, config=config, start_step=start_step,
                        batch_size=config.batch_size, num_devices=mesh.size,
                        is_main_process=is_main)
  if start_step == 0:
    logger.write(f"Training {config.model.name} with {config.loss.name} on {config.dataset}: "
                 f"{config.num_epochs} epochs x {steps_per_epoch} steps of "
                 f"{config.batch_size} images on {mesh.size} device(s).")

  # Exactly the batches this attempt trains on: the pipeline (endless) stops
  # there, so the prefetch thread has ended when training does; without the
  # take it was reading the next epoch, and closing it waited up to 15 s.
  batches = data_lib.global_batches(
      data.dataset.take(total_steps - start_step).as_numpy_iterator(), mesh)
  profiler = profiling.StepProfiler(workdir, config.profile_steps,
                                    process_index=jax.process_index())
  try:
    with run.training(logger):
      steps_left = batches
      if start_step < total_steps:
        # Compiled before the first step, so that the step clock (images/s,
        # step time, MFU) never includes compilation; the lowered program's
        # cost analysis gives the FLOPs per step (hcl_jax.train.throughput).
        first_batch = next(batches)
        train_step.compile(state, first_batch)
        logger.log_compiled(train_step.compile_seconds, throughput.step_cost(
            lowered=train_step.lowered, compiled=train_step.compiled, num_devices=mesh.size,
            bf16=config.mixed_precision))
        steps_left = itertools.chain([first_batch], batches)
      for step in range(start_step + 1, total_steps + 1):
        profiler.before_step(step)
        state, metrics = train_step(state, next(steps_left))
        profiler.after_step(step, state)
        monitor.update(metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          monitor.check()  # raises in "stop" mode; no checkpoint after a bad step
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          metrics["epoch"] = (step - 1) // steps_per_epoch + 1
          if monitor.skipped:
            metrics["skipped_updates"] = monitor.skipped
          logger.log(step, metrics)
        if run.end_of_step(step, state, {"data_step": step}, before_save=monitor.check):
          break
  finally:
    profiler.close()  # however training ended: the trace so far is kept
    # Stops and joins the prefetch thread now, however training ended, while
    # the interpreter is whole, not in its teardown (see run_errors.exit_now).
    batches.close()
  stopped = run.training_ended()
  if stopped is not None:
    return stopped
  if monitor.skipped:
    logger.write(f"warning: {monitor.skipped} update(s) skipped as non-finite "
                 f"(first at step {monitor.first_bad[0]}: {divergence.describe(monitor.first_bad[1])}).")

  # Several processes: a signal on any one of them now ends them all (exit 75).
  run.evaluation_phase()
  logger.write("Pre-training done; evaluating the encoder (linear readout and kNN).")
  trained = evaluate.evaluate_encoder(config, model, state, mesh)
  initial = evaluate.evaluate_encoder(config, model, initial_state, mesh)
  results = {
      **trained,
      "random_init": initial,
      "dataset": config.dataset,
      "loss": config.loss.name,
      "seed": config.seed,
      "steps": total_steps,
  }
  if monitor.skipped:
    results["skipped_updates"] = monitor.skipped
  results = run.write_results(results)
  logger.log_evaluation(total_steps, {**trained, **{f"random_init_{k}": v
                                                    for k, v in initial.items()}})
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

  def train(config: Any) -> int:
    from hcl_jax.run import lifecycle
    return lifecycle.exit_code(
        _run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value))

  # The config is checked before any backend or dataset starts.
  entry_point.run(_WORKDIR.value, config=lambda: config_check.validate(_CONFIG.value), work=train)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
