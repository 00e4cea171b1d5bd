"""What keeps a training run from lying about or destroying a workdir.

- ``WorkdirLock``: one running job per workdir. ``<workdir>/run.lock`` holds
  the holder's host, pid and start time; a second run refuses at once naming
  them. The lock is taken over only when its holder is provably gone: the
  same host and a pid that no longer runs (or runs a process started after
  the lock was written, i.e. a reused pid). A lock written on another host
  can't be checked from here, so it is never broken automatically: the
  message says which file to delete once that job is known to be dead.
- Run identity (``run_identity``, ``check_identity``): the settings that make
  two runs different experiments (an image run's ``IDENTITY_KEYS``: dataset,
  image size, model, loss, optimizer, batch size, seed, augmentation, data
  order; a graph run's ``hcl_jax.graph.train.IDENTITY_KEYS``) are stored in
  every checkpoint (``hcl_jax.run.lifecycle``); resuming with a different
  identity refuses with a one-line diff before anything is read, renamed or
  overwritten. More epochs (and
  logging, checkpointing and evaluation settings) are not identity.
- ``Attempts``: every start of the run is recorded in
  ``<workdir>/attempts.json``, so ``wall_time_s`` adds up all attempts.
- ``RunError`` and ``os_error_line``: failures a user can act on become one
  line (``main`` prints them without a traceback).

Every workdir read and write goes through ``etils.epath`` (local paths and
gs:// alike); only the lock's exclusive create differs by file system (see
``WorkdirLock``).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from typing import Any, Mapping

from etils import epath

# The workdir's file names and the exit codes (defined in run.files, the
# standard library only: the launchers import them too).
from hcl_jax.run.files import (  # noqa: F401  (re-exported: run_guard.RESULTS_JSON ...)
    ATTEMPTS_FILE, CHECKPOINTS_DIR, CONFIG_JSON, EXIT_ERROR, EXIT_INTERRUPTED,
    EXIT_RETRYABLE, LOCK_FILE, METRICS_JSONL, RESULTS_JSON)

IDENTITY_KEY = "identity"

# Keys of the config that define the experiment. A prefix ("model") covers
# every key below it. Not here, so free to change on resume: num_epochs,
# data_dir, logging / checkpointing / evaluation settings, input-pipeline
# parallelism, on_nonfinite.
IDENTITY_KEYS = ("dataset", "image_size", "batch_size", "seed", "model", "loss",
                 "optimizer", "mixed_precision", "augment", "data.shuffle_buffer",
                 "data.mean", "data.std")


class RunError(Exception):
  """A one-line, actionable failure (printed by ``main`` without a traceback)."""


class WorkdirLocked(RunError):
  """Another live run holds the workdir."""


class IdentityMismatch(RunError):
  """The config is a different experiment than the checkpoints in the workdir."""


def os_error_line(e: OSError, fallback_path: str | os.PathLike | None = None) -> str:
  """``PATH: cause`` for an OS-level failure, e.g. ``/w/run.lock: Read-only file system``."""
  path = e.filename if e.filename is not None else fallback_path
  cause = e.strerror or type(e).__name__
  if e.filename2 is not None:
    path = f"{path} -> {e.filename2}"
  return f"{path}: {cause}" if path is not None else f"{cause}: {e}"


def _now_iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------ lock


def _process_start_time(pid: int) -> float | None:
  """Unix start time of a local pid (Linux /proc), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of stat(5), after pid and comm
    with open("/proc/stat", encoding="ascii") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _pid_alive(pid: int, since: float) -> bool:
  """Whether the local process ``pid`` still runs the job that started at ``since``."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process: alive
  started = _process_start_time(pid)
  # A pid started (well) after the lock was written is a reused pid.
  return started is None or started <= since + 2.0


class WorkdirLock:
  """``<workdir>/run.lock``: held while a run uses the workdir.

  Local paths: created with ``O_CREAT | O_EXCL``, atomic. gs://
  (object stores without an exclusive create through epath): written only
  if absent, then read back to check that this run's token won; two runs
  starting within the same second can both pass this check (documented
  limitation; on GCS use one launcher per workdir).

  Only process 0 of a multi-process job should hold it (``main`` does that):
  the other processes write nothing to the workdir themselves.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.held = False
    self.took_over: dict | None = None  # the stale holder's record, if any
    self._record: dict | None = None

  def _describe(self, record: Mapping[str, Any]) -> str:
    return (f"host {record.get('host')!r}, pid {record.get('pid')}, started "
            f"{record.get('started')}")

  def _read(self) -> dict | None:
    try:
      record = json.loads(self.path.read_text())
      return record if isinstance(record, dict) else {}
    except FileNotFoundError:
      return None
    except (ValueError, UnicodeDecodeError):
      return {}  # half-written by a killed run: unreadable means no live holder info

  def _create(self, text: str) -> bool:
    """Writes the lock if it does not exist; False if it does."""
    if "://" not in os.fspath(self.path):
      # epath has no exclusive mode, so the one local call that bypasses it.
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():
      return False
    self.path.write_text(text)
    time.sleep(0.5)  # let a racing writer land, then see whose token stuck
    return self._read() == json.loads(text)

  def acquire(self) -> WorkdirLock:
    """Takes the lock; WorkdirLocked (one line) if a live run holds it."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "token": os.urandom(8).hex()}
    record["started"] = _now_iso(record["time"])
    text = json.dumps(record)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create(text):
        self.held, self._record = True, record
        return self
      holder = self._read()
      if holder is None:
        continue  # released in between: try again
      if not self._holder_gone(holder):
        if holder.get("host") == record["host"]:
          pid = holder.get("pid")
          raise WorkdirLocked(
              f"{self.path} is held by a running job ({self._describe(holder)}); refusing to "
              f"start a second run on the same workdir. Wait for it to finish, or see it with "
              f"`ps -o pid,etime,args -p {pid}` and stop it with `kill {pid}` (it saves a "
              "checkpoint and exits 75; rerun this command then to continue).")
        raise WorkdirLocked(
            f"{self.path} is held by a job on another host ({self._describe(holder)}); "
            "refusing to start. Wait for it, or stop it on that host (`kill PID` there); if that "
            "job is dead, delete the lock file and start again.")
      self.took_over = holder
      self.path.unlink(missing_ok=True)
    raise WorkdirLocked(f"{self.path}: could not take the lock (another run keeps taking it).")

  def _holder_gone(self, holder: Mapping[str, Any]) -> bool:
    if not holder:
      return True  # empty or garbled file: written by a run killed mid-write
    if holder.get("host") != socket.gethostname():
      return False  # can't see another host's processes
    pid = holder.get("pid")
    if not isinstance(pid, int):
      return True
    return not _pid_alive(pid, float(holder.get("time", 0)))

  def stale_message(self) -> str | None:
    if self.took_over is None:
      return None
    if not self.took_over:
      return f"Took over {self.path}: its content was unreadable (a run killed while writing it)."
    return (f"Took over the stale lock {self.path} of a run that is gone "
            f"({self._describe(self.took_over)}; no such process on this host).")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      if self._read() == self._record:
        self.path.unlink(missing_ok=True)
    except OSError:
      pass  # e.g. the workdir became read-only; the next run sees our pid is gone

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# -------------------------------------------------------------------- identity


def _lookup(config: Any, key: str) -> Any:
  value = config
  for part in key.split("."):
    if value is None:
      return None
    value = value.get(part) if hasattr(value, "get") else None
  return value


def _flatten(prefix: str, value: Any, out: dict) -> None:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    for k in sorted(value):
      _flatten(f"{prefix}.{k}", value[k], out)
  elif isinstance(value, tuple):
    out[prefix] = list(value)
  else:
    out[prefix] = value


def run_identity(config: Any, keys: tuple[str, ...] = IDENTITY_KEYS) -> dict[str, Any]:
  """The config's identity: a flat, JSON-able ``{"loss.beta": 1.0, ...}`` of
  ``keys`` (an image run's ``IDENTITY_KEYS`` by default; a graph run's are
  ``hcl_jax.graph.train.IDENTITY_KEYS``)."""
  out: dict[str, Any] = {}
  for key in keys:
    _flatten(key, _lookup(config, key), out)
  # JSON round trip: what is stored is what is compared (tuples -> lists).
  return json.loads(json.dumps(out, default=str))


def identity_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """``["batch_size: 64 -> 32", ...]`` for every key that differs."""
  diffs = []
  for key in sorted(set(stored) | set(current)):
    old, new = stored.get(key, "<unset>"), current.get(key, "<unset>")
    if old != new:
      diffs.append(f"{key}: {old!r} -> {new!r}")
  return diffs


def identity_from_config_json(workdir: str | os.PathLike,
                              keys: tuple[str, ...] = IDENTITY_KEYS) -> dict[str, Any] | None:
  """The identity (of ``keys``) of the config a previous run saved in ``workdir``, if any."""
  path = epath.Path(workdir) / CONFIG_JSON
  try:
    return run_identity(json.loads(path.read_text()), keys)
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError):
    return None  # unreadable: nothing to compare with


def check_identity(stored: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                   where: str, allow_change: bool) -> list[str]:
  """Raises IdentityMismatch (one line) unless ``stored`` matches or changes are allowed.

  Returns the differences (empty when they match or nothing was stored).
  """
  if stored is None:
    return []
  diffs = identity_diff(stored, current)
  if diffs and not allow_change:
    raise IdentityMismatch(
        f"{where} was trained with a different config ({'; '.join(diffs)}); refusing to "
        "resume. Use another --workdir for a new experiment, or pass "
        "--allow_config_change to continue this run with the new settings.")
  return diffs


# -------------------------------------------------------------------- attempts


class Attempts:
  """``<workdir>/attempts.json``: start and last-seen time of every attempt.

  An attempt killed without warning counts up to its last ``touch`` (made at
  every checkpoint save), so ``wall_time_s`` is the sum over attempts of the
  time each one spent up to its last checkpoint, plus this attempt's whole
  time.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self.path = epath.Path(workdir) / ATTEMPTS_FILE
    self.enabled = enabled
    self.start = time.time()
    self._previous: list[dict] = []
    if enabled:
      try:
        previous = json.loads(self.path.read_text())
        self._previous = [a for a in previous if isinstance(a, dict)]
      except (FileNotFoundError, ValueError, TypeError, UnicodeDecodeError):
        self._previous = []
      self.touch()

  @property
  def count(self) -> int:
    return len(self._previous) + 1

  def wall_time_s(self, now: float | None = None) -> float:
    now = time.time() if now is None else now
    earlier = sum(max(float(a.get("last_seen", 0)) - float(a.get("start", 0)), 0.0)
                  for a in self._previous)
    return earlier + (now - self.start)

  def touch(self) -> None:
    """Records that this attempt is alive now (atomic rewrite)."""
    if not self.enabled:
      return
    records = self._previous + [{"start": round(self.start, 3),
                                 "last_seen": round(time.time(), 3),
                                 "host": socket.gethostname(), "pid": os.getpid()}]
    from hcl_jax.run import workdir_fs  # atomic locally; one upload on gs:// (no rename there)
    workdir_fs.write_text(self.path, json.dumps(records, indent=1) + "\n")


def read_results(workdir: str | os.PathLike) -> dict[str, Any]:
  """``<workdir>/results.json`` as a dict ({} if absent); RunError (one line
  naming it) if it is not a readable JSON object, so that nothing overwrites it."""
  path = epath.Path(workdir) / RESULTS_JSON
  try:
    results = json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except (ValueError, UnicodeDecodeError) as e:
    raise RunError(f"{path}: not valid JSON ({e}); move it aside (it is not "
                   "overwritten) and run again.") from None
  except OSError as e:
    raise RunError(f"{os_error_line(e, path)}; results.json must be a readable file.") from None
  if not isinstance(results, dict):
    raise RunError(f"{path} does not hold a JSON object; move it aside (it is not "
                   "overwritten) and run again.")
  return results


def check_workdir_entries(workdir: str | os.PathLike) -> None:
  """RunError (one line naming the path) for a workdir entry the run can't
  use: ``checkpoints`` that is not a directory, a ``metrics.jsonl`` that is
  not a readable file, a ``results.json`` that is not a JSON object. Checked
  before anything is written, so nothing there is truncated or replaced."""
  root = epath.Path(workdir)
  checkpoints = root / CHECKPOINTS_DIR
  if checkpoints.exists() and not checkpoints.is_dir():
    raise RunError(f"{checkpoints}: exists and is not a directory; the run keeps its "
                   "checkpoints there. Move it aside and run again.")
  metrics = root / METRICS_JSONL
  if metrics.exists():
    if metrics.is_dir():
      raise RunError(f"{metrics}: is a directory, not the run's metrics file. Move it aside "
                     "and run again.")
    try:
      with metrics.open("rb") as f:
        f.read(1)
    except OSError as e:
      raise RunError(f"{os_error_line(e, metrics)}; the run appends its metrics there.") from None
  read_results(root)


def hold_workdir(workdir: str | os.PathLike, *, is_main: bool) -> "_HeldWorkdir":
  """Context manager: checks ``workdir`` is usable and holds its lock (process 0).

  On a multi-process job process 0 alone takes the lock and tells the others
  whether it got it, so that every process refuses together (the others
  would otherwise wait forever in the first collective).
  """
  return _HeldWorkdir(workdir, is_main)


class _HeldWorkdir:

  def __init__(self, workdir, is_main):
    self.workdir = epath.Path(workdir)
    self.is_main = is_main
    self.lock: WorkdirLock | None = None

  def __enter__(self) -> WorkdirLock | None:
    error = None
    if self.is_main:
      try:
        if self.workdir.exists() and not self.workdir.is_dir():
          raise RunError(f"{self.workdir}: exists and is not a directory; --workdir must be "
                         "a directory (or a path that does not exist yet).")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = WorkdirLock(self.workdir).acquire()
        try:
          check_workdir_entries(self.workdir)
        except BaseException:
          self.lock.release()
          self.lock = None
          raise
      except (RunError, OSError) as e:
        error = e
    import jax
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils
      ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not ok and error is None:
        raise RunError(f"process 0 could not take {self.workdir / LOCK_FILE}; see its log.")
    if error is not None:
      raise error
    return self.lock

  def __exit__(self, *exc) -> None:
    if self.lock is not None:
      self.lock.release()


# ------------------------------------------------------- signals, exit codes

_phase = "start-up"


class Interrupted(RunError):
  """SIGTERM / SIGINT outside the training loop: exit EXIT_RETRYABLE."""

  def __init__(self, signal_name: str | None, phase: str):
    super().__init__(
        f"{signal_name} received {phase}: exiting with code {EXIT_RETRYABLE} (retry); the "
        "checkpoints are intact, rerun the same command to continue.")


def set_phase(phase: str) -> None:
  """Names the phase ("start-up", "evaluation") that a signal message reports."""
  global _phase
  _phase = phase


def exit_on_signals_outside_training() -> None:
  """SIGTERM / SIGINT raise Interrupted (outside PreemptionGuard, which replaces this)."""
  import signal

  def handler(signum, frame):
    del frame
    raise Interrupted(signal.Signals(signum).name, f"during {_phase}")

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
    from hcl_jax.train import divergence

    if exc is None:
      return False
    if isinstance(exc, Interrupted):
      self._exit(f"stopped: {exc}", EXIT_RETRYABLE)
    if isinstance(exc, KeyboardInterrupt):
      self._exit("stopped: interrupted (Ctrl-C).", EXIT_INTERRUPTED)
    if isinstance(exc, distributed.ProcessesOutOfStep):
      leave_without_shutdown()  # a peer is stuck or gone: its shutdown barrier would wait too
      self._exit(f"error: {exc}", EXIT_ERROR)
    if isinstance(exc, (RunError, divergence.Diverged)):
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
