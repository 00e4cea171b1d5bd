"""Failures a user can act on, as one line and an exit code.

- ``RunError``: a one-line, actionable failure (``one_line_errors`` prints it
  without a traceback); ``os_error_line`` / ``os_failure_line``: ``PATH:
  cause`` of an OS-level failure, also one inside orbax's TensorStore.
- ``Interrupted``: SIGTERM / SIGINT outside the training loop (exit 75).
- ``one_line_errors``: the context every command line runs in (see
  ``hcl_jax.run.entry_point``); ``exit_now``: the exit that skips the
  interpreter's teardown once everything is written.
"""

from __future__ import annotations

import os


from hcl_jax.run.files import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_RETRYABLE


class RunError(Exception):
  """A one-line, actionable failure (printed by ``main`` without a traceback)."""


class Diverged(RunError):
  """A non-finite step in ``on_nonfinite="stop"`` mode (``hcl_jax.train.divergence``):
  the run ends without a checkpoint after the last good step."""


def os_error_line(e: OSError, fallback_path: str | os.PathLike | None = None) -> str:
  """``PATH: cause`` for an OS-level failure, e.g. ``/w/run.lock: Read-only file system``."""
  path = e.filename if e.filename is not None else fallback_path
  cause = e.strerror or type(e).__name__
  if e.filename2 is not None:
    path = f"{path} -> {e.filename2}"
  return f"{path}: {cause}" if path is not None else f"{cause}: {e}"


# ------------------------------------------------------- signals, exit codes

_phase = "start-up"
# The last signal the handlers below raised Interrupted for, as (name,
# phase): a handler runs wherever the main thread is, and where that is a
# callback whose exceptions Python prints and ignores (JAX's garbage
# collection callback, seen in a busy CI run: the start-up SIGTERM was lost
# and the run trained on), ``raise_if_interrupted`` raises it again at the
# next phase boundary.
_pending: tuple[str | None, str] | None = None
# True once interrupt() has installed its sys.unraisablehook (once per process).
_interrupt_reports_dropped = False


class Interrupted(BaseException):
  """SIGTERM / SIGINT outside the training loop: exit EXIT_RETRYABLE.

  A BaseException, as KeyboardInterrupt is: the signal handler raises it
  wherever the main thread is, and a library's ``except Exception`` there
  (orbax opening the checkpoints, seen once in a busy CI run: the start-up
  SIGTERM was swallowed and the run trained on) must not eat it.
  """

  def __init__(self, signal_name: str | None, phase: str):
    super().__init__(
        f"{signal_name} received {phase}: exiting with code {EXIT_RETRYABLE} (retry); the "
        "checkpoints are intact, rerun the same command to continue.")


def set_phase(phase: str) -> None:
  """Names the phase ("start-up", "evaluation") that a signal message reports."""
  global _phase
  _phase = phase


def interrupt(signal_name: str | None, phase: str) -> None:
  """Raises Interrupted for a signal, remembered for ``raise_if_interrupted``."""
  global _pending
  _pending = (signal_name, phase)
  _quiet_swallowed_interrupts()
  raise Interrupted(signal_name, phase)


def _quiet_swallowed_interrupts() -> None:
  """Python reports an exception that a callback swallows (a gc callback's)
  through ``sys.unraisablehook``, as "Exception ignored in ..." and a
  traceback; an Interrupted is not lost (``raise_if_interrupted``), so that
  report is dropped: the run ends with its one line."""
  global _interrupt_reports_dropped
  if _interrupt_reports_dropped:
    return
  _interrupt_reports_dropped = True
  import sys
  previous = sys.unraisablehook

  def hook(unraisable):
    if not isinstance(unraisable.exc_value, Interrupted):
      previous(unraisable)

  sys.unraisablehook = hook


def raise_if_interrupted() -> None:
  """Raises Interrupted again if a signal's was swallowed (see ``_pending``).

  Called where a phase ends: before the training loop takes the signals
  over, and before the results are written."""
  if _pending is not None:
    raise Interrupted(*_pending)


def exit_on_signals_outside_training() -> None:
  """SIGTERM / SIGINT raise Interrupted (outside PreemptionGuard, which replaces this)."""
  import signal

  def handler(signum, frame):
    del frame
    interrupt(signal.Signals(signum).name, f"during {_phase}")

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, handler)


def _tensorstore_os_error(e: BaseException) -> str | None:
  """``PATH: cause`` of a TensorStore I/O error (orbax's arrays), e.g.
  ``ValueError: RESOURCE_EXHAUSTED: Error writing local file "P": ... [os_error_code='28']``."""
  import re
  text = str(e)
  code = re.search(r"os_error_code='?(\d+)", text)
  path = re.search(r'local file "([^"]+)"', text)
  if code is None:
    return None
  where = path.group(1) if path else "the checkpoint directory"
  return f"{where}: {os.strerror(int(code.group(1)))}"


def _cause_chain(e: BaseException | None):
  """``e``, then its ``__cause__`` / ``__context__``, each once."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def os_failure_line(e: BaseException,
                    fallback_path: str | os.PathLike | None = None) -> str | None:
  """``PATH: cause`` if ``e`` (or an exception in its cause chain) is an
  OS-level failure: an OSError, or TensorStore's error with an
  ``os_error_code`` (a full disk under orbax); else None."""
  for error in _cause_chain(e):
    if isinstance(error, OSError) and error.strerror:
      return os_error_line(error, fallback_path)
  for error in _cause_chain(e):
    line = _tensorstore_os_error(error)
    if line is not None:
      return line
  return None


class one_line_errors:
  """Turns the failures a user can act on into one line and an exit code.

  Interrupted: EXIT_RETRYABLE. KeyboardInterrupt: EXIT_INTERRUPTED (130). RunError, ValueError,
  Diverged, OSError (also one found in an exception's cause chain, e.g. a
  full disk under orbax): EXIT_ERROR (1). Anything else keeps its traceback.
  """

  def __init__(self, workdir: str | os.PathLike | None = None, *, hard_exit: bool = False):
    """Args:
      workdir: named in an OS error that carries no path.
      hard_exit: end through ``exit_now`` (command-line entry points), not
        SystemExit.
    """
    self.workdir = workdir
    self.hard_exit = hard_exit

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    from hcl_jax import distributed

    if exc is None:
      return False
    if isinstance(exc, Interrupted):
      self._exit(f"stopped: {exc}", EXIT_RETRYABLE)
    if isinstance(exc, KeyboardInterrupt):
      self._exit("stopped: interrupted (Ctrl-C).", EXIT_INTERRUPTED)
    if isinstance(exc, distributed.ProcessesOutOfStep):
      leave_without_shutdown()  # a peer is stuck or gone: its shutdown barrier would wait too
      self._exit(f"error: {exc}", EXIT_ERROR)
    if isinstance(exc, RunError):
      self._exit(f"error: {exc}", EXIT_ERROR)
    os_failure = os_failure_line(exc, self.workdir)
    if os_failure is not None:
      self._exit(f"error: {os_failure}", EXIT_ERROR)
    if isinstance(exc, (ValueError, OSError)):  # config and data errors; an OSError
      # without strerror (DatasetNotPreparedError) carries its whole message
      self._exit(f"error: {exc}", EXIT_ERROR)
    return False

  def _exit(self, line: str, code: int) -> None:
    import sys
    print(line.splitlines()[0] if line else line, file=sys.stderr, flush=True)
    if self.hard_exit:
      exit_now(code)
    raise SystemExit(code)


_shutdown_on_exit = True
_before_exit: list = []


def leave_without_shutdown(before_exit=None) -> None:
  """``exit_now`` then skips ``jax.distributed.shutdown``: its barrier would
  wait for processes that are stuck or gone (a cross-process interrupt).
  ``before_exit``, if given, is called (once) right before the process ends
  instead (``hcl_jax.run.preemption``: the coordinator leaves last)."""
  global _shutdown_on_exit
  _shutdown_on_exit = False
  if before_exit is not None and before_exit not in _before_exit:
    _before_exit.append(before_exit)


def exit_now(code: int) -> None:
  """Ends the process with ``code`` once everything is on disk, skipping teardown.

  Why not a normal exit: Python 3.11 ends any thread that takes the GIL
  while the interpreter finalises with ``pthread_exit``. A thread inside
  C++ at that moment (a tf.data or prefetch thread in JAX, a buffer freed on
  XLA's threads) unwinds through a frame that swallows the forced unwind,
  and glibc aborts: ``terminate called after throwing an instance of ''``,
  ``FATAL: exception not rethrown``, rc 134, after everything was written,
  which a scheduler counts as a failure (2 of 32 tiny complete runs, 3 at a
  time on 2 cores; tests/test_exit_code.py makes it certain). Callers close
  the checkpointer and the logger first; here the streams and log handlers
  are flushed, a multi-process job leaves the coordination service cleanly
  (its barrier), and the process ends without finalising the interpreter.
  """
  import logging as py_logging
  import sys
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  for handler in py_logging.getLogger().handlers:
    try:
      handler.flush()
    except (OSError, ValueError):
      pass
  if "jax" in sys.modules and _shutdown_on_exit:
    try:
      from jax._src import distributed
      if distributed.global_state.client is not None:
        import jax
        jax.distributed.shutdown()
    except Exception:  # pylint: disable=broad-except
      pass  # exiting anyway; the code below is what matters
  for hook in _before_exit:
    try:
      hook()
    except Exception:  # pylint: disable=broad-except
      pass  # exiting anyway
  os._exit(code)
