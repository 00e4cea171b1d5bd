"""A ``jax.profiler`` trace of chosen training steps: ``--config.profile_steps=N,M``.

Steps N to M (1-based, inclusive) are traced into
``WORKDIR/profile/process_<i>/plugins/profile/<time>/``: ``<host>.xplane.pb``
(TensorBoard's profile plugin / XProf), ``<host>.trace.json.gz`` and
``perfetto_trace.json.gz`` (https://ui.perfetto.dev). One folder per process,
so processes of one host never write the same file. The profiler writes
through its own C++ file layer, which knows no gs://: a gs:// workdir's trace
is written to a local temporary folder and copied there through
``hcl_jax.run.workdir_fs`` (``etils.epath``) when the trace stops.

The trace stops after step M, or however training ends before it (an
exception, a preemption), in ``close``; steps already done when a resumed run
starts are skipped, and the trace starts at the first step in N..M it runs.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

from hcl_jax.config import values as checks
from hcl_jax.run import workdir_fs

from hcl_jax.run.files import PROFILE_DIR, process_file


class StepProfiler:
  """Starts a trace before step N and stops it after step M."""

  def __init__(self, workdir: str | os.PathLike, steps: str, *, process_index: int = 0):
    self._range = checks.parse_step_range(steps)
    self._destination = workdir_fs.as_path(workdir) / PROFILE_DIR / process_file(process_index, "")
    self._local: str | None = None   # where the profiler writes while it runs
    self._running = False

  @property
  def destination(self):
    return self._destination

  def before_step(self, step: int) -> None:
    if self._range is None or self._running:
      return
    first, last = self._range
    if first <= step <= last:
      if workdir_fs.is_remote(self._destination):
        self._local = tempfile.mkdtemp(prefix="hcl_jax_profile_")
      else:
        self._local = os.fspath(self._destination)
        os.makedirs(self._local, exist_ok=True)
      import jax
      jax.profiler.start_trace(self._local, create_perfetto_trace=True)
      self._running = True

  def after_step(self, step: int, state: Any) -> None:
    """Stops the trace after step M, once that step's work has finished."""
    if self._running and step >= self._range[1]:
      import jax
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    """Stops a running trace and copies it to a gs:// workdir; else nothing."""
    if not self._running:
      return
    self._running = False
    import jax
    jax.profiler.stop_trace()
    if workdir_fs.is_remote(self._destination):
      _copy_tree(pathlib.Path(self._local), self._destination)
      shutil.rmtree(self._local, ignore_errors=True)


def _copy_tree(source: pathlib.Path, destination: Any) -> None:
  for path in source.rglob("*"):
    if path.is_file():
      target = destination / path.relative_to(source).as_posix()
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())
