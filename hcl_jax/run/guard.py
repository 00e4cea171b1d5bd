"""What keeps a training run from lying about or destroying a workdir.

- ``WorkdirLock``: one running job per workdir. ``<workdir>/run.lock`` holds
  the holder's host, pid and start time; a second run refuses at once naming
  them. The lock is taken over only when its holder is provably gone: the
  same host and a pid that no longer runs (or runs a process started after
  the lock was written, i.e. a reused pid). A lock written on another host
  can't be checked from here, so it is never broken automatically: the
  message says which file to delete once that job is known to be dead.
- ``Attempts``: every start of the run is recorded in
  ``<workdir>/attempts.json``, so ``wall_time_s`` adds up all attempts.
- ``hold_workdir``: the workdir checked usable (``check_workdir_entries``)
  and locked by process 0, every process refusing together.

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

from hcl_jax.run.files import ATTEMPTS_FILE, CHECKPOINTS_DIR, LOCK_FILE, METRICS_JSONL, RESULTS_JSON

from hcl_jax.run.errors import RunError, os_error_line


class WorkdirLocked(RunError):
  """Another live run holds the workdir."""


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
    self.start = round(time.time(), 3)  # as recorded, so sums agree with the file
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

  def touch(self) -> float:
    """Records that this attempt is alive now (atomic rewrite); returns that
    time, as recorded (``wall_time_s(touch())`` is what a rerun will count)."""
    now = round(time.time(), 3)
    if not self.enabled:
      return now
    records = self._previous + [{"start": self.start,
                                 "last_seen": now,
                                 "host": socket.gethostname(), "pid": os.getpid()}]
    from hcl_jax.run import workdir_fs  # atomic locally; one upload on gs:// (no rename there)
    workdir_fs.write_text(self.path, json.dumps(records, indent=1) + "\n")
    return now


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
