"""``initialize_distributed``: the bounded multi-process start (see
``hcl_jax.distributed``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Sequence


from hcl_jax.distributed.cluster import (_ENV_INIT_TIMEOUT, _JAX_DEADLINE_MARGIN_S, ClusterSpec,
                                        DistributedInitError, _init_timeout_s, detect_cluster)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """How this process was set up: ``mode`` as ``ClusterSpec.mode``."""
  mode: str
  process_index: int
  process_count: int
  local_device_count: int
  global_device_count: int


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout_s: int | None = None,
) -> DistributedInfo:
  """Starts JAX's multi-process runtime if this is a multi-process run.

  Must run before anything touches a JAX backend (``jax.devices()``, any
  computation, ``jax.device_put``): ``jax.distributed.initialize`` refuses
  afterwards. Safe to call twice (the second call only reports).

  Args:
    coordinator_address: ``host:port`` of process 0 (any free port); all
      processes pass the same value.
    num_processes: total number of processes.
    process_id: this process's id, ``0 <= process_id < num_processes``.
    local_device_ids: the local devices this process drives (default all).
    initialization_timeout_s: how long to wait for every process to join
      (default ``--distributed_init_timeout_s``, else env
      HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S, else 120 s). Past it the process
      prints ``error: DistributedInitError: ...`` and exits 1.

  Returns:
    A DistributedInfo: mode (``ClusterSpec.mode``), process index and
    count, local and global device counts.

  Raises:
    ValueError: an incomplete or inconsistent cluster specification.
    DistributedInitError: jax.distributed.initialize raised (one line).
  """
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  timeout_s = _init_timeout_s(initialization_timeout_s, os.environ)
  spec = detect_cluster(os.environ, coordinator_address=coordinator_address,
                        num_processes=num_processes, process_id=process_id,
                        local_device_ids=local_device_ids)
  if not jax.distributed.is_initialized():   # else a second call: report only
    if spec.mode in ("explicit", "gke-tpu", "slurm"):
      # Cross-process CPU collectives (psum over hosts) need an
      # implementation; gloo is the default in jax 0.10 but was not always.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      _call_initialize(timeout_s, spec, dict(
          coordinator_address=spec.coordinator_address,
          num_processes=spec.num_processes,
          process_id=spec.process_id,
          local_device_ids=spec.local_device_ids,
      ))
    elif spec.mode == "tpu":
      _call_initialize(timeout_s, spec, {})

  info = DistributedInfo(
      mode=spec.mode,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      local_device_count=jax.local_device_count(),
      global_device_count=jax.device_count(),
  )
  logger.info(
      "JAX runtime (%s, from %s): process %d of %d, %d local / %d global devices: %s",
      info.mode, spec.source, info.process_index, info.process_count,
      info.local_device_count, info.global_device_count,
      ", ".join(str(d) for d in jax.local_devices()))
  return info


def _describe(spec: ClusterSpec) -> str:
  """'process 0 of 2, coordinator host:port' (what the error lines name)."""
  if spec.coordinator_address is None:   # tpu: JAX reads the metadata itself
    count = spec.num_processes if spec.num_processes else "?"
    return f"process ? of {count}, coordinator from the Cloud TPU VM metadata"
  return (f"process {spec.process_id} of {spec.num_processes}, "
          f"coordinator {spec.coordinator_address}")


def _exit_when_not_joined(joined: threading.Event, timeout_s: int, spec: ClusterSpec) -> None:
  """The watchdog's body: one line and exit 1 unless ``joined`` within
  ``timeout_s``. os._exit: the main thread is inside JAX's C++ connect (it
  releases the GIL), which no Python exception can interrupt."""
  if joined.wait(timeout_s):
    return
  line = (f"error: DistributedInitError: {_describe(spec)} ({spec.mode}: {spec.source}): "
          f"not all {spec.num_processes or '?'} processes joined within {timeout_s} s. A "
          "host did not start this run or exited first (see its log; e.g. a stale process "
          "held its TPU). --distributed_init_timeout_s (env "
          f"{_ENV_INIT_TIMEOUT}) sets the wait.")
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  print(line, file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def _call_initialize(timeout_s: int, spec: ClusterSpec, kwargs: dict) -> None:
  """jax.distributed.initialize, announced first and bounded by a watchdog.

  JAX gets a later deadline than the watchdog's: when a process does not join
  in time, JAX's C++ client ends this process itself with a fatal
  "DEADLINE_EXCEEDED ... RegisterTask" log and a C++ stack trace (no Python
  exception), which names neither the coordinator nor the process count.
  """
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  print(f"jax.distributed.initialize ({_describe(spec)}; {spec.mode}): waiting up to "
        f"{timeout_s} s for every process to join.", file=sys.stderr, flush=True)
  joined = threading.Event()
  watchdog = threading.Thread(target=_exit_when_not_joined, args=(joined, timeout_s, spec),
                              name="distributed-init-watchdog", daemon=True)
  watchdog.start()
  started = time.monotonic()
  try:
    jax.distributed.initialize(**kwargs,
                               initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S)
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError etc.)
    detail = " ".join(str(e).split())[:400]
    raise DistributedInitError(
        f"jax.distributed.initialize ({_describe(spec)}) failed after "
        f"{time.monotonic() - started:.0f} s (timeout {timeout_s} s): {detail}") from e
  finally:
    joined.set()
