"""The run lifecycle that image runs (``hcl_jax.main``) and graph runs
(``hcl_jax.graph.train``) share: everything around their own steps.

  with run_guard.hold_workdir(workdir, is_main=...) as lock:   # run.lock
    run = lifecycle.Run(KIND, config, workdir, lock, keep=..., save_every_steps=...)
    done = run.finished_results(total_steps)       # kinds that keep results.json
    restored = run.resume(template_state, total_steps)
    logger = MetricLogger(workdir, start_step=run.start_step, ...)
    with run.training(logger):
      for step in range(run.start_step + 1, total_steps + 1):
        state = ...                                  # the kind's own step
        if run.end_of_step(step, state, extra):      # saves when due; a signal: True
          break
    stopped = run.training_ended()                   # {"stopped_at_step", "signal"} or None
    if stopped: return stopped                       # the CLI exits exit_code(stopped)
    ...                                              # evaluation
    results = run.write_results({...})

What each part does:

- ``Run(...)``: a stale lock taken over is said; the checkpointer
  (``hcl_jax.run.checkpointing``: checksums, another model refused, unreadable
  checkpoints set aside) is opened; the config's identity (the kind's
  ``identity_keys``) is compared with the newest checkpoint's (or the saved
  config.json's) and a different experiment refused in one line
  (``identity_lib.IdentityMismatch``) before anything is read or renamed,
  unless ``allow_config_change``.
- ``finished_results``: a kind with ``keeps_results`` (graph runs) returns a
  finished run's results.json when it covers this config's steps (results
  are written once); an image run evaluates its final checkpoint again.
- ``resume``: the newest readable checkpoint, refused if past this config's
  end; the attempt is recorded (``run_guard.Attempts``: wall time over
  attempts).
- ``training``: SIGTERM and SIGINT set a flag (``PreemptionGuard``) that
  ``end_of_step`` turns into a save and a stop; the checkpointer is closed
  (the last save on disk) inside it.
- ``end_of_step``: the due checkpoint (every ``save_every_steps``, the last
  step, a stop) carries the identity and the device count; metrics.jsonl is
  flushed before it, so a kill -9 never loses a metric line a checkpoint
  covers.
- ``training_ended``: a stopped run's line ("SIGTERM received: checkpoint N
  saved, exiting."); a signal during the last save raises
  ``run_errors.Interrupted`` (exit 75).
- ``write_results``: ``wall_time_s`` and ``attempts`` added, evaluations
  recorded earlier by ``python -m hcl_jax.evaluate`` kept, results.json
  written by process 0.

Command lines end in ``hcl_jax.run.entry_point.run`` with ``exit_code(results)``:
0, or 75 ("retry") after a SIGTERM, 130 after a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

from hcl_jax.run import guard as run_guard
from hcl_jax.run import errors as run_errors
from hcl_jax.run import files
from hcl_jax.run import identity as identity_lib

NUM_DEVICES_KEY = "num_devices"  # in each checkpoint's extra: the device count it was saved on


@dataclasses.dataclass(frozen=True)
class RunKind:
  """What differs between the kinds of run (image, graph) in their lifecycle."""
  name: str
  # Config keys (a prefix covers the keys below it) that make another experiment.
  identity_keys: tuple[str, ...]
  # A finished run's rerun returns its results.json (else: evaluates again).
  keeps_results: bool
  # The end of the refusal of a checkpoint past the config's end: what to do.
  past_end_hint: str = "Pass a --config.num_epochs that covers it."

  def identity(self, config: Any) -> dict[str, Any]:
    return identity_lib.run_identity(config, self.identity_keys)


IMAGE = RunKind("image", identity_lib.IDENTITY_KEYS, keeps_results=False,
                past_end_hint="Pass a --config.num_epochs that covers it, or evaluate it with "
                              "`python -m hcl_jax.evaluate`.")


def exit_code(results: dict[str, Any]) -> int:
  """A command line's exit code for what ``train_and_evaluate`` returned: 0
  for results; saved and stopped before the end: 130 for a user's Ctrl-C,
  else ``files.EXIT_RETRYABLE`` (a scheduler restarts it)."""
  if "stopped_at_step" not in results:
    return 0
  return 130 if results.get("signal") == "SIGINT" else files.EXIT_RETRYABLE


def check_identity(ckpt: Any, identity: dict, workdir: str, allow_change: bool,
                   keys: tuple[str, ...] = identity_lib.IDENTITY_KEYS) -> None:
  """Refuses (IdentityMismatch) before any checkpoint is restored or renamed;
  with ``allow_change`` says what changed. ``keys``: the identity's, for a
  workdir whose only record is its config.json."""
  newest = ckpt.newest_extra()
  if newest is not None and identity_lib.IDENTITY_KEY in newest[1]:
    stored, where = newest[1][identity_lib.IDENTITY_KEY], f"checkpoint {newest[0]} in {workdir}"
  else:  # no checkpoint, or one older than identities: the saved config.json
    stored, where = identity_lib.identity_from_config_json(workdir, keys), f"the run in {workdir}"
  diffs = identity_lib.check_identity(stored, identity, where=where, allow_change=allow_change)
  if diffs:
    print(f"Continuing {where} with a changed config (--allow_config_change): "
          f"{'; '.join(diffs)}.", flush=True)


def check_resumable(restored: Any, total_steps: int, num_devices: int, config: Any,
                    workdir: str, *, hint: str = IMAGE.past_end_hint) -> None:
  """Refuses a checkpoint past this config's end (RunError, one line); notes a
  change of device count on the console (and so in logs/process_<i>.log)."""
  if restored.step > total_steps:
    raise run_errors.RunError(
        f"checkpoint {restored.step} in {workdir} is past the end of this config's "
        f"{total_steps} steps (num_epochs={config.num_epochs}); refusing to report a "
        f"{restored.step}-step state as {total_steps} steps. {hint}")
  saved_on = restored.extra.get(NUM_DEVICES_KEY)
  if saved_on is not None and saved_on != num_devices:
    print(f"Note: checkpoint {restored.step} was saved on {saved_on} device(s); resuming on "
          f"{num_devices} (the global batch of {config.batch_size} is the same; per-device "
          "batches and reduction order differ, so results are not bit-equal to a run on "
          f"{saved_on}).", flush=True)


class Run:
  """One run in a workdir whose lock it holds (see the module docstring)."""

  def __init__(self, kind: RunKind, config: Any, workdir: str, lock: Any = None, *,
               keep: int, save_every_steps: int, allow_config_change: bool = False,
               num_devices: int = 1, is_main: bool = True):
    """Opens the checkpoints and checks the config's identity against them.

    Args:
      kind: ``IMAGE`` or the graph's ``RunKind``.
      config: the checked config.
      workdir: the run's directory (local or gs://), held by ``lock``.
      lock: what ``run_guard.hold_workdir`` returned (None on processes > 0).
      keep, save_every_steps: the ``Checkpointer``'s.
      allow_config_change: continue checkpoints of another identity.
      num_devices: the devices a step runs on (stored in each checkpoint).
      is_main: process 0 (writes attempts.json and results.json).
    """
    from hcl_jax import distributed
    from hcl_jax.run import workdir_fs
    from hcl_jax.run.checkpointing import Checkpointer

    self.kind, self.config, self.workdir = kind, config, workdir
    self.num_devices, self.is_main = num_devices, is_main
    self.identity = kind.identity(config)
    self.start_step = 0
    self.total_steps: int | None = None
    self.attempts: run_guard.Attempts | None = None
    self.guard: Any = None
    self._logger: Any = None
    self._step, self._stopped = 0, False
    if lock is not None and lock.stale_message():
      print(lock.stale_message(), flush=True)
    # Orbax's set-up is the first cross-process collective: start it together.
    distributed.wait_for_all_processes("before_checkpointer")
    self.ckpt = Checkpointer(workdir_fs.as_path(workdir) / files.CHECKPOINTS_DIR, keep=keep,
                             save_every_steps=save_every_steps)
    try:
      check_identity(self.ckpt, self.identity, workdir, allow_config_change, kind.identity_keys)
    except identity_lib.IdentityMismatch:  # every process refuses (they read the same step)
      self.ckpt.close()
      raise

  def finished_results(self, total_steps: int) -> dict[str, Any] | None:
    """A ``keeps_results`` kind's results.json if the run is finished for
    ``total_steps`` (the checkpointer is then closed); else None."""
    if not self.kind.keeps_results:
      return None
    results = run_guard.read_results(self.workdir)
    if results and results.get("steps") == total_steps:
      self.ckpt.close()
      return results
    return None

  def resume(self, template: Any, total_steps: int) -> Any:
    """The newest readable checkpoint (``checkpointing.Restored``) or None;
    refuses one past ``total_steps``; starts this attempt's record."""
    self.total_steps = total_steps
    restored = self.ckpt.restore_latest(template)
    if restored is not None:
      check_resumable(restored, total_steps, self.num_devices, self.config, self.workdir,
                      hint=self.kind.past_end_hint)
      self.start_step = self._step = restored.step
      if restored.step:
        print(f"Resuming from checkpoint {restored.step} in {self.workdir}.", flush=True)
    self.attempts = run_guard.Attempts(self.workdir, enabled=self.is_main)
    return restored

  @contextlib.contextmanager
  def training(self, logger: Any) -> Iterator[Any]:
    """The step loop's context: a signal becomes a stop at ``end_of_step``;
    the checkpointer is closed at its end (a failure closes the logger too)."""
    from hcl_jax.run.preemption import PreemptionGuard

    self._logger = logger
    try:
      run_errors.raise_if_interrupted()  # a start-up signal that a callback swallowed
      with PreemptionGuard(handle_sigint=True) as guard:
        self.guard = guard
        yield guard
        self.ckpt.close()  # inside the guard: a signal while the last save lands waits for it
    except run_errors.Diverged:
      self.ckpt.close()  # pending saves are of good steps; the entry point prints the one line
      logger.close()
      raise
    except BaseException:
      import jax
      if jax.process_count() == 1:
        # The save in flight is of a good step: on disk for the rerun. (With
        # several processes the others may be gone: closing could wait for them.)
        try:
          self.ckpt.close()
        except Exception:  # pylint: disable=broad-except  (e.g. that save failed)
          pass  # the failure being raised is the one to report
      try:
        logger.close()
      except Exception:  # pylint: disable=broad-except  (e.g. the disk that failed)
        pass
      raise

  def end_of_step(self, step: int, state: Any, extra: dict[str, Any], *,
                  before_save: Any = None) -> bool:
    """After ``step``: saves the checkpoint that is due (``extra`` plus the
    identity and the device count), ``before_save()`` first and metrics.jsonl
    flushed; True when a signal asks the loop to stop (saved)."""
    stop = self.guard.should_stop_at(step)
    force = stop or step == self.total_steps
    if self.ckpt.should_save(step, force=force):
      if before_save is not None:
        before_save()
      self._logger.flush()  # every metric line this checkpoint covers is on disk before it
      self.ckpt.maybe_save(step, state, {**extra, identity_lib.IDENTITY_KEY: self.identity,
                                         NUM_DEVICES_KEY: self.num_devices}, force=force)
      self.attempts.touch()
    self._step, self._stopped = step, stop
    return stop

  def training_ended(self) -> dict[str, Any] | None:
    """After ``training``: None when training is complete. Stopped by a
    signal: its line (every process), the logger closed, and
    ``{"stopped_at_step", "signal"}``. A signal during the final save:
    ``run_errors.Interrupted``."""
    if self._stopped:
      message = f"{self.guard.stop_reason}: checkpoint {self._step} saved, exiting."
      if self.is_main:
        self._logger.write(message)
      else:
        print(message, flush=True)
      self._logger.close()
      return {"stopped_at_step": self._step, "signal": self.guard.signal_name}
    if self.guard.should_stop:
      self._logger.close()
      raise run_errors.Interrupted(self.guard.signal_name, "after training")
    return None

  def evaluation_phase(self) -> None:
    """From here a signal ends the run with exit 75 (every process of several)."""
    from hcl_jax.run import preemption
    run_errors.set_phase("evaluation")
    preemption.exit_every_process_on_signal("evaluation")

  def write_results(self, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with ``wall_time_s`` (all attempts) and ``attempts``, and
    the evaluations ``python -m hcl_jax.evaluate`` recorded earlier; written
    to results.json by process 0. Returns what was written."""
    from hcl_jax.run import workdir_fs

    run_errors.raise_if_interrupted()  # an evaluation signal that a callback swallowed
    # This attempt's end, as attempts.json records it: a rerun of the finished
    # run counts exactly this much of it (the write itself may take a while).
    end = self.attempts.touch()
    results = {**results, "wall_time_s": round(self.attempts.wall_time_s(end), 1),
               "attempts": self.attempts.count}
    if self.is_main:
      earlier = run_guard.read_results(self.workdir).get("evaluations")
      if earlier:
        results["evaluations"] = earlier
      workdir_fs.write_json(workdir_fs.as_path(self.workdir) / files.RESULTS_JSON, results)
    return results
