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
(state, step, data position and RNG) and ends exactly as a run that went
straight through. SIGTERM (a preemption) during training saves and exits 75,
"retry" (``run_guard.EXIT_RETRYABLE``: schedulers restart on it), Ctrl-C
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
from absl import flags
from ml_collections import config_flags

# Before anything touches a JAX backend: its flags must exist when absl parses.
from hcl_jax import distributed  # noqa: F401  (defines --coordinator_address etc.)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
from hcl_jax.run import entry_point  # noqa: E402  (defines --workdir)

_WORKDIR = entry_point.WORKDIR
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even though the config's identity (model, loss, batch size, seed, ...) differs "
    "from the checkpoints' (more epochs never need this).")

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
  import itertools

  import jax
  import jax.numpy as jnp

  from hcl_jax.distributed import compile_sync
  from hcl_jax import data as data_lib
  from hcl_jax.evaluation import protocol as evaluate
  from hcl_jax import models
  from hcl_jax.train import divergence
  from hcl_jax.train import optim
  from hcl_jax.train import profiling
  from hcl_jax.run import guard as run_guard
  from hcl_jax.train import throughput
  from hcl_jax.train import step as train_step_lib
  from hcl_jax.run import workdir_fs
  from hcl_jax.run.checkpointing import Checkpointer, rng_from_list, rng_to_list
  from hcl_jax.run.metrics_log import MetricLogger
  from hcl_jax.run import preemption
  from hcl_jax.run.preemption import PreemptionGuard

  is_main = jax.process_index() == 0
  if lock is not None and lock.stale_message():
    print(lock.stale_message(), flush=True)
  # The model and the optimizer, once per run; the state carries the optimizer.
  model = models.create_model(config)
  steps_per_epoch = data_lib.pretrain_steps_per_epoch(config)
  init_rng = jax.random.key(config.seed)
  state = train_step_lib.create_train_state(
      model, optim.make_optimizer(config, steps_per_epoch), init_rng, mesh,
      (config.image_size, config.image_size, 3))
  # The random-init encoder is evaluated at the end: a copy, since the train
  # step donates the state's buffers.
  initial_state = jax.tree.map(jnp.copy, state.replace(opt_state=()))

  # Orbax's set-up is the first cross-process collective: start it together.
  distributed.wait_for_all_processes("before_checkpointer")
  ckpt = Checkpointer(workdir_fs.as_path(workdir) / "checkpoints", keep=config.keep_checkpoints,
                      save_every_steps=config.checkpoint_every_steps)
  start_step, rng = 0, jax.random.fold_in(init_rng, 1)
  identity = run_guard.run_identity(config)
  _check_identity(ckpt, identity, workdir, allow_config_change)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    start_step, state, extra = restored
    rng = rng_from_list(extra["rng"])
    if extra["data_step"] != start_step:
      raise RuntimeError(f"checkpoint {start_step} has data position {extra['data_step']}.")
  total_steps = config.num_epochs * steps_per_epoch
  if restored is not None:
    _check_resumable(restored, total_steps, mesh.size, config, workdir)
  if start_step:
    print(f"Resuming from checkpoint {start_step} in {workdir}.", flush=True)
  attempts = run_guard.Attempts(workdir, enabled=is_main)
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

  step, stopped = start_step, False
  batches = data_lib.global_batches(data.dataset.as_numpy_iterator(), mesh)
  profiler = profiling.StepProfiler(workdir, config.profile_steps,
                                    process_index=jax.process_index())
  try:
    with PreemptionGuard(handle_sigint=True) as guard:
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
        stopped = guard.should_stop_at(step)
        force = stopped or step == total_steps
        if ckpt.should_save(step, force=force):
          monitor.check()
          # The train step draws no randomness of its own (the data pipeline's
          # is seeded by step), but the RNG is saved so that features that do
          # resume.
          ckpt.maybe_save(step, state, {"data_step": step, "rng": rng_to_list(rng),
                                        run_guard.IDENTITY_KEY: identity,
                                        NUM_DEVICES_KEY: mesh.size}, force=force)
          logger.flush()  # a kill after this checkpoint keeps the metrics up to it
          attempts.touch()
        if stopped:
          break
      ckpt.close()  # inside the guard: a signal while the last save lands waits for it
  except divergence.Diverged:
    ckpt.close()  # pending saves are of good steps; main prints the one line
    logger.close()
    raise
  finally:
    profiler.close()  # however training ended: the trace so far is kept
    # Stops and joins the prefetch thread now, however training ended, while
    # the interpreter is whole, not in its teardown (see run_guard.exit_now).
    batches.close()
  if stopped:
    # Every process says so (each one's log is in WORKDIR/logs/).
    message = f"{guard.stop_reason}: checkpoint {step} saved, exiting."
    if is_main:
      logger.write(message)
    else:
      print(message, flush=True)
    logger.close()
    return {"stopped_at_step": step, "signal": guard.signal_name}
  if guard.should_stop:  # the signal came while the final checkpoint was written
    logger.close()
    raise run_guard.Interrupted(guard.signal_name, "after training")
  if monitor.skipped:
    logger.write(f"warning: {monitor.skipped} update(s) skipped as non-finite "
                 f"(first at step {monitor.first_bad[0]}: {divergence.describe(monitor.first_bad[1])}).")

  run_guard.set_phase("evaluation")
  # Several processes: a signal on any one of them now ends them all (exit 75).
  preemption.exit_every_process_on_signal("evaluation")
  logger.write("Pre-training done; evaluating the encoder (linear readout and kNN).")
  trained = evaluate.evaluate_encoder(config, model, state, mesh)
  initial = evaluate.evaluate_encoder(config, model, initial_state, mesh)
  attempts.touch()  # this attempt's end: a rerun of the finished run counts all of it
  results = {
      **trained,
      "random_init": initial,
      "dataset": config.dataset,
      "loss": config.loss.name,
      "seed": config.seed,
      "steps": total_steps,
      "wall_time_s": round(attempts.wall_time_s(), 1),
      "attempts": attempts.count,
  }
  if monitor.skipped:
    results["skipped_updates"] = monitor.skipped
  if is_main:
    # Evaluations that `python -m hcl_jax.evaluate` recorded earlier stay.
    earlier = run_guard.read_results(workdir).get("evaluations")
    if earlier:
      results["evaluations"] = earlier
    workdir_fs.write_json(workdir_fs.as_path(workdir) / run_guard.RESULTS_JSON, results)
  logger.log_evaluation(total_steps, {**trained, **{f"random_init_{k}": v
                                                    for k, v in initial.items()}})
  logger.write(
      f"Linear readout top-1: {trained['linear_top1']:.2f}% trained vs "
      f"{initial['linear_top1']:.2f}% at random initialisation; kNN top-1: "
      f"{trained['knn_top1']:.2f}% vs {initial['knn_top1']:.2f}%.")
  logger.close()
  return results


NUM_DEVICES_KEY = "num_devices"  # in each checkpoint's extra: the device count it was saved on


def _check_resumable(restored: Any, total_steps: int, num_devices: int, config: Any,
                     workdir: str) -> None:
  """Refuses a checkpoint past this config's end (RunError, one line); notes a
  change of device count on the console (and so in logs/process_<i>.log)."""
  from hcl_jax.run import guard as run_guard

  if restored.step > total_steps:
    raise run_guard.RunError(
        f"checkpoint {restored.step} in {workdir} is past the end of this config's "
        f"{total_steps} steps (num_epochs={config.num_epochs}); refusing to report a "
        f"{restored.step}-step state as {total_steps} steps. Pass a --config.num_epochs that "
        "covers it, or evaluate it with `python -m hcl_jax.evaluate`.")
  saved_on = restored.extra.get(NUM_DEVICES_KEY)
  if saved_on is not None and saved_on != num_devices:
    print(f"Note: checkpoint {restored.step} was saved on {saved_on} device(s); resuming on "
          f"{num_devices} (the global batch of {config.batch_size} is the same; per-device "
          "batches and reduction order differ, so results are not bit-equal to a run on "
          f"{saved_on}).", flush=True)


def _check_identity(ckpt: Any, identity: dict, workdir: str, allow_change: bool) -> None:
  """Refuses (IdentityMismatch) before any checkpoint is restored or renamed."""
  from hcl_jax.run import guard as run_guard

  newest = ckpt.newest_extra()
  if newest is not None and run_guard.IDENTITY_KEY in newest[1]:
    stored, where = newest[1][run_guard.IDENTITY_KEY], f"checkpoint {newest[0]} in {workdir}"
  else:  # no checkpoint, or one older than identities: the saved config.json
    stored, where = run_guard.identity_from_config_json(workdir), f"the run in {workdir}"
  diffs = run_guard.check_identity(stored, identity, where=where, allow_change=allow_change)
  if diffs:
    print(f"Continuing {where} with a changed config (--allow_config_change): "
          f"{'; '.join(diffs)}.", flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")

  def train(config: Any) -> int:
    from hcl_jax.run import guard as run_guard
    results = _run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    if "stopped_at_step" not in results:
      return 0
    # Saved and stopped before the end: "retry" (a scheduler restarts it), or
    # 130 for a user's Ctrl-C.
    return 130 if results.get("signal") == "SIGINT" else run_guard.EXIT_RETRYABLE

  # The config is checked before any backend or dataset starts.
  entry_point.run(_WORKDIR.value, config=lambda: config_check.validate(_CONFIG.value), work=train)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
