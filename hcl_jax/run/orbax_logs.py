"""Orbax's noise around a failure that the run reports in one line: the
"Event loop is closed" tracebacks of a failed restore, and the repeated ERROR
records of a full disk (see ``hcl_jax.run.errors.os_failure_line``)."""

from __future__ import annotations

import logging
import os


# Orbax's error for one array of a restore that TensorStore could not read.
_UNREAD_ARRAY = "Encountered error while reading array index"


class quiet_closed_loop_errors:
  """Drops the tracebacks a failed restore or save leaves behind.

  When one array of a restore (or save) fails, orbax closes its asyncio loop while
  TensorStore still completes the other reads; each completion then prints a
  RuntimeError "Event loop is closed" traceback (thousands of lines for a
  big state), and each read of another damaged array whose coroutine was
  never awaited prints "Exception ignored in: <coroutine object
  _read_array_index_and_device_put>" with orbax's "Encountered error while
  reading array index" and the array's whole TensorStore spec (seen under
  load: the graph lifecycle test's damaged checkpoint). They come through
  ``sys.excepthook`` / ``sys.unraisablehook`` and carry no information (the
  failure itself is reported, with the step), so the filter stays installed
  for the rest of the process: completions keep arriving after ``restore``
  returns.
  """
  _installed = False

  def __enter__(self):
    cls = type(self)
    if not cls._installed:
      cls._installed = True
      import sys
      old_excepthook, old_unraisable = sys.excepthook, sys.unraisablehook

      def is_noise(exc) -> bool:
        return ((isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
                or str(exc).startswith(_UNREAD_ARRAY))

      def excepthook(exc_type, exc, tb):
        if not is_noise(exc):
          old_excepthook(exc_type, exc, tb)

      def unraisablehook(unraisable):
        if not is_noise(unraisable.exc_value):
          old_unraisable(unraisable)

      sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    return self

  def __exit__(self, *exc):
    return False


class OsErrorRecords(logging.Filter):
  """Drops orbax's ERROR records of an OS-level write failure (a full disk).

  One failed save makes orbax log the same error (an ``OSError`` such as
  ``[Errno 28] No space left on device``, or TensorStore's ``...
  [os_error_code='28']``) with a traceback from each of its threads (three
  or four, ~200-300 lines), and then raise it; the run reports that
  exception as one line naming the path and the cause
  (``run_errors.one_line_errors``): a record is dropped when its exception is
  one that would give (``run_errors.os_failure_line``). Other orbax records pass.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    from hcl_jax.run import errors as run_errors

    if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and run_errors.os_failure_line(exc) is not None:
      return False
    message = record.getMessage()
    return "os_error_code=" not in message and "[Errno " not in message


def quiet_os_error_records() -> None:
  absl_logger = logging.getLogger("absl")  # orbax logs through absl.logging
  if not any(isinstance(f, OsErrorRecords) for f in absl_logger.filters):
    absl_logger.addFilter(OsErrorRecords())
