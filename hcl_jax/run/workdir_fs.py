"""The one file-system layer for a run's workdir: ``etils.epath``, local or gs://.

Everything a run reads or writes in its ``--workdir`` (orbax checkpoints,
``metrics.jsonl``, ``config.json``/``config.yaml``, ``results.json``,
TensorBoard events, ``logs/process_<i>.log``) goes through ``epath.Path``, the
layer orbax itself uses, so a ``gs://bucket/run`` workdir behaves like a local
folder and nothing is ever written to a local directory literally named
``gs:``.

Object stores have no append and no rename-in-place, so files that grow during
a run (metrics, TensorBoard events, process logs) are kept in memory and
rewritten whole by ``RewrittenFile``, at most every ``flush_every_s`` seconds
and on ``close()``. A GCS object only becomes visible once fully uploaded, so a
reader never sees half a file there; locally the text goes to a temporary file
that is renamed over the old one.

Which library does the bytes: on gs:// paths epath uses TensorFlow's gfile when
TensorFlow is importable (the default here) and fsspec/gcsfs when
``EPATH_USE_TF=false``. Only the latter can be pointed at a GCS emulator (see
README, "Rehearsing a pod slice"); orbax's array data goes through
TensorStore's own GCS driver either way.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from etils import epath

__all__ = ["as_path", "is_remote", "write_text", "read_json", "write_json", "RewrittenFile"]


def is_remote(path: str | os.PathLike) -> bool:
  """True for URLs such as gs://bucket/dir (anything with a scheme)."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """An ``epath.Path``; local paths made absolute (orbax requires it)."""
  if isinstance(path, epath.Path) and (is_remote(path) or path.is_absolute()):
    return path
  text = os.fspath(path)
  return epath.Path(text if is_remote(text) else os.path.abspath(text))


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` so that readers see the old or the new file, never half.

  The parent directory is created if missing.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_text(text)  # an object appears only once its upload completes
    return
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
  tmp.write_text(text)
  tmp.replace(path)


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(as_path(path).read_text())


def write_json(path: str | os.PathLike, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2) + "\n")


class RewrittenFile:
  """A file that grows in memory and is rewritten whole to ``path``.

  ``append`` is cheap; the file on disk/bucket is brought up to date by
  ``flush()``, which ``append`` calls itself once ``flush_every_s`` seconds
  have passed since the last write, and by ``close()``. Thread-safe.
  """

  def __init__(self, path: str | os.PathLike, *, initial: bytes = b"",
               flush_every_s: float = 10.0):
    self.path = as_path(path)
    self.flush_every_s = flush_every_s
    self._chunks: list[bytes] = [initial] if initial else []
    self._size = len(initial)
    self._dirty = bool(initial)
    self._last_flush = time.monotonic()
    self._lock = threading.Lock()

  @property
  def size(self) -> int:
    return self._size

  def append(self, data: bytes | str) -> None:
    if isinstance(data, str):
      data = data.encode("utf-8")
    with self._lock:
      self._chunks.append(data)
      self._size += len(data)
      self._dirty = True
    if time.monotonic() - self._last_flush >= self.flush_every_s:
      self.flush()

  def flush(self) -> None:
    with self._lock:
      if not self._dirty:
        return
      data = b"".join(self._chunks)
      self._chunks = [data]
      self._dirty = False
      self._last_flush = time.monotonic()
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if is_remote(self.path):
        self.path.write_bytes(data)
      else:
        tmp = self.path.parent / f"{self.path.name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(self.path)

  def close(self) -> None:
    self.flush()
