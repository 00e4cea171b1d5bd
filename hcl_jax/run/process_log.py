"""Each process's log, kept in the workdir: ``WORKDIR/logs/process_<i>.log``.

On a pod slice every worker VM has its own terminal output, and a preempted
VM takes it along. ``ProcessLog`` copies what this process prints (its
``sys.stdout``/``sys.stderr``) and every Python log record at or above the
root logger's level (absl, orbax, hcl_jax) into ``logs/process_<i>.log``
every ``flush_every_s`` seconds from a background thread and once more on
exit. Locally the new text is appended (``O_APPEND``, one write per flush),
never the whole file rewritten, so two writers of one log (a rerun started
while the old process still prints its last lines) lose no line; on gs://,
where objects can't be appended to, the file is rewritten whole
(``workdir_fs.RewrittenFile``). Output that native code writes straight to file descriptor 2 (XLA's C++
logging) is not in it.

  with ProcessLog(workdir, jax.process_index()):
    train_and_evaluate(...)

A rerun of the same workdir (a resumed job) appends to the file.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from typing import TextIO

from hcl_jax.run import workdir_fs

from hcl_jax.run.files import LOG_DIR, process_file


def log_path(workdir: str | os.PathLike, process_index: int):
  return workdir_fs.as_path(workdir) / LOG_DIR / process_file(process_index)


class _AppendedFile:
  """A local file that ``flush`` appends the pending text to (``O_APPEND``).

  The same interface as ``workdir_fs.RewrittenFile``. Thread-safe.
  """

  def __init__(self, path):
    self.path = path
    self._pending: list[bytes] = []
    self._lock = threading.Lock()

  def append(self, data: bytes | str) -> None:
    if isinstance(data, str):
      data = data.encode("utf-8")
    with self._lock:
      self._pending.append(data)

  def flush(self) -> None:
    with self._lock:
      data, self._pending = b"".join(self._pending), []
      if not data:
        return
      os.makedirs(os.path.dirname(os.fspath(self.path)), exist_ok=True)
      fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      try:
        view = memoryview(data)
        while view:  # a write may be short; each continues at the end of the file
          view = view[os.write(fd, view):]
      finally:
        os.close(fd)

  def close(self) -> None:
    self.flush()


class _Tee:
  """A text stream that writes to ``stream`` and to the log file."""

  def __init__(self, stream: TextIO, file: workdir_fs.RewrittenFile | _AppendedFile):
    self._stream, self._file = stream, file

  def write(self, text: str) -> int:
    self._file.append(text)
    return self._stream.write(text)

  def flush(self) -> None:
    self._stream.flush()

  def __getattr__(self, name):  # isatty, fileno, encoding, ...
    return getattr(self._stream, name)


class _FileHandler(logging.Handler):

  def __init__(self, file: workdir_fs.RewrittenFile | _AppendedFile):
    super().__init__()
    self._file = file
    self.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))

  def emit(self, record: logging.LogRecord) -> None:
    try:
      self._file.append(self.format(record) + "\n")
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


class ProcessLog:
  """Context manager: this process's output also goes to the workdir's logs/."""

  def __init__(self, workdir: str | os.PathLike, process_index: int, *,
               flush_every_s: float = 10.0):
    path = log_path(workdir, process_index)
    # The background thread flushes; appends never block on the write.
    if workdir_fs.is_remote(path):
      initial = path.read_bytes() if path.exists() else b""
      self._file = workdir_fs.RewrittenFile(path, initial=initial, flush_every_s=float("inf"))
    else:
      self._file = _AppendedFile(path)
    self._flush_every_s = flush_every_s
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._handler = _FileHandler(self._file)
    self._saved: tuple[TextIO, TextIO] | None = None
    self.path = path

  def _flush_loop(self) -> None:
    while not self._stop.wait(self._flush_every_s):
      try:
        self._file.flush()
      except Exception as e:  # pylint: disable=broad-except
        print(f"warning: could not write {self.path}: {e}", file=sys.__stderr__)

  def __enter__(self) -> ProcessLog:
    self._file.append(f"--- process log opened {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"(pid {os.getpid()}) ---\n")
    self._saved = (sys.stdout, sys.stderr)
    sys.stdout = _Tee(sys.stdout, self._file)
    sys.stderr = _Tee(sys.stderr, self._file)
    logging.getLogger().addHandler(self._handler)
    self._thread = threading.Thread(target=self._flush_loop, daemon=True,
                                    name="process_log")
    self._thread.start()
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None and not issubclass(exc_type, SystemExit):
      # The traceback is printed after the streams are restored: keep it here.
      self._file.append("".join(traceback.format_exception(exc_type, exc, tb)))
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    logging.getLogger().removeHandler(self._handler)
    if self._saved is not None:
      sys.stdout, sys.stderr = self._saved
    self._file.close()
