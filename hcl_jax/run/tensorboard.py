"""TensorBoard scalar event files written through the workdir layer
(``hcl_jax.run.workdir_fs``: local or gs://), for ``hcl_jax.run.metrics_log``."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from typing import Mapping

from etils import epath

from hcl_jax.run import workdir_fs


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()
_EVENT_FILE_IDS = itertools.count()  # unique names within a process and second


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc32c(length)) + data
          + struct.pack("<I", _masked_crc32c(data)))


class TensorBoardScalars:
  """TensorBoard scalar event files written through the workdir layer.

  tf.summary's writer goes through TensorFlow's own file system, which
  cannot be pointed at a GCS emulator; these are the same records (Event
  protos in TFRecord framing, the "scalars" plugin's metadata), kept in
  memory and rewritten whole (``workdir_fs.RewrittenFile``). A file is
  closed at ``_MAX_EVENT_FILE_BYTES`` and a new one started, so a long run
  never re-uploads more than that; TensorBoard reads every events file of
  the directory.
  """

  _MAX_EVENT_FILE_BYTES = 1 << 20

  def __init__(self, logdir: epath.Path, *, flush_every_s: float):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tensorflow.core.framework import summary_pb2
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.util import event_pb2
    self._pb = (summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2, event_pb2)
    self._logdir = logdir
    self._flush_every_s = flush_every_s
    self._file: workdir_fs.RewrittenFile | None = None
    # What tensorboard's tf.summary.scalar attaches: the "scalars" plugin.
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars", content=b""),
        data_class=summary_pb2.DATA_CLASS_SCALAR)

  def _event_file(self) -> workdir_fs.RewrittenFile:
    if self._file is not None and self._file.size < self._MAX_EVENT_FILE_BYTES:
      return self._file
    if self._file is not None:
      self._file.close()
    event_pb2 = self._pb[4]
    now = time.time()
    name = (f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_EVENT_FILE_IDS)}.v2")
    first = event_pb2.Event(wall_time=now, file_version="brain.Event:2")
    self._file = workdir_fs.RewrittenFile(self._logdir / name,
                                          initial=_tfrecord(first.SerializeToString()),
                                          flush_every_s=self._flush_every_s)
    return self._file

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2, event_pb2 = self._pb
    values = [summary_pb2.Summary.Value(
        tag=name, metadata=self._metadata,
        tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value],
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto()))
              for name, value in scalars.items()]
    event = event_pb2.Event(wall_time=time.time(), step=step,
                            summary=summary_pb2.Summary(value=values))
    self._event_file().append(_tfrecord(event.SerializeToString()))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
