"""What the command lines that take a ``--workdir`` do around their work.

``python -m hcl_jax.main`` (train, then evaluate) and ``python -m
hcl_jax.evaluate`` (a run's latest checkpoint) both end in :func:`run`, so
that they fail, log and exit the same way::

  def main(argv):
    ...  # absl usage checks (app.UsageError)
    entry_point.run(workdir, config=lambda: checked_config, work=lambda config: exit_code)

Imported before absl parses the flags: it imports ``hcl_jax.distributed``,
which defines ``--coordinator_address`` and the other runtime flags.
"""

from __future__ import annotations

import faulthandler
import signal
from typing import Any, Callable, NoReturn

from absl import flags
from absl import logging

from hcl_jax import distributed
from hcl_jax.run import errors as run_errors
from hcl_jax.run.process_log import ProcessLog

# The one --workdir of the command lines (hcl_jax.main, hcl_jax.evaluate,
# hcl_jax.graph.main): defined here, so that they can share a process (tests).
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def define_run_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """``--config`` and ``--allow_config_change`` of the training command lines
  (``hcl_jax.main``, ``hcl_jax.graph.main``): defined by the first caller,
  the same flags for the next (the two modules can share a process)."""
  from ml_collections import config_flags

  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "The experiment's config file: configs/digits.py, "
        "configs/paper.py:dataset=D,method=M, configs/graph.py:dataset=NAME.")
    flags.DEFINE_bool(
        "allow_config_change", False,
        "Resume even though the config's identity (the model, loss, batch size, seed, ...; "
        "never the epochs) differs from the checkpoints'.")
  return (flags.FlagHolder(flags.FLAGS, flags.FLAGS["config"]),
          flags.FlagHolder(flags.FLAGS, flags.FLAGS["allow_config_change"]))


def run(workdir: str, *, config: Callable[[], Any], work: Callable[[Any], int],
        phase: str = "start-up") -> NoReturn:
  """Runs ``work(config())`` as a command-line entry point; exits with its code.

  In this order:

  0. SIGUSR1 dumps every thread's Python stack to stderr (``faulthandler``).
  1. SIGTERM / SIGINT raise ``run_errors.Interrupted`` (exit 75, "retry", one
     line naming ``phase``) until training's ``PreemptionGuard`` takes over.
  2. ``config()``: the run's config, checked before any backend starts or
     anything is written; a mistake in it (ValueError, ``RunError``) is one
     line and exit 1.
  3. absl logging at WARNING unless ``--verbosity`` is given: orbax and TFDS
     log every file they touch at INFO, which would bury the progress display
     (pass ``--verbosity=0`` to see them).
  4. Inside ``run_errors.one_line_errors`` (ended by ``run_errors.exit_now``):
     the multi-process runtime (``distributed.initialize_distributed``), then
     this process's log ``WORKDIR/logs/process_<i>.log`` (closed, i.e.
     uploaded, before any exit), a line naming the process and its devices,
     and ``work(config)``.

  Args:
    workdir: the run's directory (local or gs://); named in an OS error that
      carries no path.
    config: returns the checked config; raises on a bad one.
    work: the entry point's work on that config; returns the exit code.
    phase: what a signal before training interrupts ("start-up",
      "evaluation").
  """
  # `kill -USR1 PID` prints every thread's Python stack to the process's
  # stderr: what a hung process (one of a pod's, say) is waiting in. The
  # tests' and the rehearsal's timeouts use it before they kill a process.
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  run_errors.exit_on_signals_outside_training()
  run_errors.set_phase(phase)
  with run_errors.one_line_errors(workdir):  # nothing started yet: a plain SystemExit
    checked = config()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  with run_errors.one_line_errors(workdir, hard_exit=True):
    try:
      info = distributed.initialize_distributed()
    except distributed.DistributedInitError as e:
      raise run_errors.RunError(f"DistributedInitError: {e}") from None
    with ProcessLog(workdir, info.process_index):
      print(f"Process {info.process_index} of {info.process_count} ({info.mode}): "
            f"{info.local_device_count} of {info.global_device_count} devices.", flush=True)
      code = work(checked)
  run_errors.exit_now(code)
