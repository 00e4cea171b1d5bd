"""Turning a preemption notice (SIGTERM) into "save a checkpoint and exit 75".

Spot/preemptible TPU VMs (and GKE, SLURM) announce preemption with SIGTERM
and kill the process some seconds later. The default SIGTERM action kills
the process at once, losing everything since the last periodic checkpoint.
Inside a ``PreemptionGuard`` the signal only sets a flag; the train loop
polls it once per step, saves, and returns; ``main`` then exits 75
(``files.EXIT_RETRYABLE``, "retry": the job is not finished).

What a signal does in each phase, on one process or several:

- start-up (before the first step): one process: exit 75 at once (the entry
  point's handler). Several: after ``jax.distributed.initialize`` JAX's
  preemption service holds SIGTERM; the notice is acted on at the first
  training step (save, exit 75 everywhere).
- training steps and their checkpoints: every process saves the same step
  and exits 75 (below).
- the final checkpoint's write: one process: exit 75 once it is on disk.
  Several: the notice goes to JAX's preemption service, which no step asks
  any more; the run goes on to evaluate (the next signal stops it).
- evaluation: every process exits 75 (``exit_every_process_on_signal``); the
  rerun evaluates the final checkpoint again.

Single process (the usual case, and every test): a Python signal handler.

Multi-host (``jax.process_count() > 1``): the hosts must stop at the *same*
step, or the ones still training hang in a collective. After
``jax.distributed.initialize()`` JAX runs a preemption service (on by
default, ``jax_enable_preemption_service``) whose C++ notifier catches
SIGTERM on any host and agrees on a common step; ``should_stop_at(step)``
asks it via ``multihost_utils.reached_preemption_sync_point(step)``. The guard
then installs no SIGTERM handler of its own, because a Python handler would
replace the service's and hide the notice from it. Without that service the
hosts instead all-gather their flags each call (a tiny blocking collective).
Enter the guard after ``jax.distributed.initialize()``, and call
``should_stop_at`` on every host at every step, with the same step numbers.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types
from typing import Any

import jax
import numpy as np

_log = logging.getLogger(__name__)


def _preemption_service_running() -> bool:
  try:
    from jax._src import distributed
  except ImportError:  # pragma: no cover - private module moved
    return False
  state = distributed.global_state
  return (getattr(state, "client", None) is not None
          and getattr(state, "preemption_sync_manager", None) is not None)


class PreemptionGuard:
  """Context manager: SIGTERM (and optionally SIGINT) set a stop flag.

  Example::

    with PreemptionGuard() as guard:
      for step in range(start + 1, total + 1):
        state = train_step(state, batch)
        stop = guard.should_stop_at(step)
        ckpt.maybe_save(step, state, extra, force=stop or step == total)
        if stop:
          break
    ckpt.close()   # waits for the async write; then return / exit 75

  A second SIGINT while the flag is set ends the process at once (exit code
  130, one line), so an interactive user can still abort a run that is slow
  to reach a step end.
  The previous handlers are restored on exit.
  """

  def __init__(self, *, handle_sigint: bool = False):
    """Args:
      handle_sigint: also treat Ctrl-C (SIGINT) as "save and stop".
    """
    self.handle_sigint = handle_sigint
    self._received: int | None = None
    self._old_handlers: dict[int, Any] = {}
    self._use_sync_service = False
    self._synced_stop = False
    self._other_process_stop = False

  # -- state -------------------------------------------------------------------

  @property
  def should_stop(self) -> bool:
    """True once this process received one of the guarded signals."""
    return self._received is not None

  @property
  def signal_name(self) -> str | None:
    """Name of the first guarded signal received (e.g. "SIGTERM"), or None."""
    return None if self._received is None else signal.Signals(
        self._received).name

  @property
  def stop_reason(self) -> str | None:
    """What made ``should_stop_at`` return True, for the log; None before.

    "SIGTERM received" when this process's handler saw the signal; under
    JAX's preemption service (multi-host), which catches the signal itself
    and tells every host, "preemption notice from JAX's preemption service".
    """
    if self._synced_stop:
      return ("Preemption notice from JAX's preemption service (SIGTERM or a "
              "maintenance event on at least one host) received")
    if self._received is not None:
      return f"{self.signal_name} received"
    if self._other_process_stop:
      return "SIGTERM received by another process"
    return None

  def should_stop_at(self, step: int) -> bool:
    """Whether every process should save and stop after ``step``.

    Single process: the local flag. Multi-host: a decision all hosts agree
    on (see the module docstring); call it on every host at every step.
    """
    if jax.process_count() == 1:
      return self.should_stop
    from jax.experimental import multihost_utils
    if self._use_sync_service:
      self._synced_stop = bool(multihost_utils.reached_preemption_sync_point(step))
      return self._synced_stop
    flags = multihost_utils.process_allgather(np.asarray(self.should_stop))
    self._other_process_stop = bool(np.any(flags))
    return self._other_process_stop

  # -- context manager ---------------------------------------------------------

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      raise ValueError("PreemptionGuard must be entered on the main thread "
                       "(Python only runs signal handlers there)")
    self._received = None
    self._use_sync_service = (jax.process_count() > 1
                              and _preemption_service_running())
    signals = []
    if not self._use_sync_service:
      signals.append(signal.SIGTERM)
    if self.handle_sigint:
      signals.append(signal.SIGINT)
    for signum in signals:
      self._old_handlers[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._old_handlers.items():
      signal.signal(signum, handler)
    self._old_handlers.clear()

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self._received is not None and signum == signal.SIGINT:
      # Second Ctrl-C: the user really means it. Exit now, without unwinding
      # (a traceback, or waiting for a step or save to finish); checkpoints
      # already on disk are complete (orbax commits them atomically).
      os.write(2, b"Second SIGINT: exiting at once (no new checkpoint).\n")
      os._exit(130)
    if self._received is None:
      self._received = signum
      _log.warning("Received %s: will save a checkpoint and stop after the "
                   "current step.", name)
    else:
      _log.warning("Received %s again; already stopping.", name)


# -- outside training, on several processes ------------------------------------

_INTERRUPT_KEY = "hcl_jax/interrupted"
# How long a process told of another's signal waits for its own main thread
# to unwind (it may sit in a collective whose peer has gone) before it ends
# itself.
INTERRUPT_GRACE_S = 20.0
# Each process says so once its handler is in place (the pod rehearsal waits for it).
EVALUATION_GUARDED = "SIGTERM or SIGINT on any process now ends every process with exit 75"


def exit_every_process_on_signal(phase: str) -> None:
  """From now on, SIGTERM / SIGINT on any process ends every process with 75.

  For the phases after training (the final checkpoint is on disk) of a job
  with several processes. There the training loop's agreement on a stop
  step (JAX's preemption service, which catches SIGTERM itself) no longer
  runs, so a signal would otherwise be swallowed (the service's handler) or
  end one process and leave the others waiting forever in their next
  collective. Here a Python handler on the process that got the signal
  records it in the coordination service's key-value store and raises
  ``run_errors.Interrupted`` (one line, exit 75); a watcher thread on every
  other process sees the key, interrupts its main thread the same way, and,
  if that thread is stuck in a collective with the process that left, ends
  the process after ``INTERRUPT_GRACE_S`` with code 75 itself.

  On one process it does nothing: the entry point's handler
  (``run_errors.exit_on_signals_outside_training``) already exits 75.

  What it cannot see: a signal that reaches a process after its training
  loop's last preemption check and before this call (the final checkpoint's
  save, milliseconds to seconds) is taken by JAX's preemption service and
  not acted on; that process, and the job, then finish normally (exit 0, the
  results written), unless the scheduler kills them first, in which case the
  rerun evaluates again.
  """
  if jax.process_count() == 1:
    return
  import _thread
  import signal as signal_lib
  import sys
  import time

  from jax._src import distributed as jax_distributed

  from hcl_jax.run import errors as run_errors
  from hcl_jax.run import files

  client = jax_distributed.global_state.client
  me, count = jax.process_index(), jax.process_count()

  def leave_coordinator_last():
    # Process 0 hosts the coordination service: when it ends, every other
    # process's client aborts (SIGABRT, rc -6) at its next heartbeat, maybe
    # before it reached its own exit. So the others say they are leaving and
    # process 0 waits for them (bounded: a stuck one ends by the watcher's
    # grace below).
    if me != 0:
      client.key_value_set(f"{_INTERRUPT_KEY}/left/{me}", "1")
      return
    deadline = time.monotonic() + INTERRUPT_GRACE_S + 10.0
    for index in range(1, count):
      left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
      client.blocking_key_value_get(f"{_INTERRUPT_KEY}/left/{index}", max(left_ms, 1))
    time.sleep(1.0)  # from their key to their os._exit

  def handler(signum, frame):
    del frame
    name = signal_lib.Signals(signum).name
    try:
      client.key_value_set(_INTERRUPT_KEY, f"{me}:{name}")
    except Exception:  # pylint: disable=broad-except  (set already: another process was first)
      pass
    run_errors.leave_without_shutdown(leave_coordinator_last)  # the others may be gone
    run_errors.interrupt(name, f"during {phase}")

  def watch():
    while True:
      try:
        value = client.blocking_key_value_get(_INTERRUPT_KEY, 3_600_000)
        break
      except Exception:  # pylint: disable=broad-except  (the hour passed: keep waiting)
        time.sleep(1.0)
    sender, _, name = value.partition(":")
    if sender == str(me):
      return  # this process's own handler is unwinding
    print(f"{name} received by process {sender} during {phase}: stopping this process too.",
          file=sys.stderr, flush=True)
    run_errors.leave_without_shutdown(leave_coordinator_last)
    _thread.interrupt_main(signal_lib.SIGTERM)  # -> handler above, in the main thread
    time.sleep(INTERRUPT_GRACE_S)
    print(f"stopped: {name} received by process {sender} during {phase} (this process's "
          f"main thread did not unwind within {INTERRUPT_GRACE_S:.0f} s: it waits in a "
          f"collective with that process): exiting with code {files.EXIT_RETRYABLE} "
          "(retry); the checkpoints are intact, rerun the same command to continue.",
          file=sys.stderr, flush=True)
    run_errors.exit_now(files.EXIT_RETRYABLE)

  for signum in (signal_lib.SIGTERM, signal_lib.SIGINT):
    signal_lib.signal(signum, handler)
  threading.Thread(target=watch, name="hcl_jax-interrupt-watch", daemon=True).start()
  print(f"Process {me} of {jax.process_count()}, {phase}: {EVALUATION_GUARDED}.",
        file=sys.stderr, flush=True)
