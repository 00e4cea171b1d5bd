"""Multi-process runtime initialisation: one call, before JAX touches a backend.

``initialize_distributed()`` is the first thing the training entry point does.
It picks one of three cases:

* **Explicit cluster** (GPU or CPU machines): a coordinator address, the
  number of processes and this process's id are given, as keyword arguments,
  as the absl flags ``--coordinator_address``, ``--num_processes``,
  ``--process_id``, ``--local_device_ids`` (defined by this module), or as the
  environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``, ``JAX_LOCAL_DEVICE_IDS`` (in that order of precedence).
  Calls ``jax.distributed.initialize(coordinator_address=..., ...)``.
* **Multi-host Cloud TPU VM** (a pod slice): TPU chips are attached to this VM
  and the TPU metadata lists more than one worker, or cannot be read. Calls
  ``jax.distributed.initialize()`` with no arguments; JAX finds the workers,
  this worker's id and the coordinator from the TPU metadata itself.
* **Single process** (a laptop, one GPU machine, a single-host TPU VM such as
  v4-8): nothing to do; every local device is already in ``jax.devices()``.

After it, ``jax.devices()`` lists every device of every process, so the mesh
of ``hcl_jax.mesh.make_mesh()`` spans the whole slice.

On CPU, cross-process collectives use gloo, JAX's default since 0.4.3x
(``jax_cpu_collectives_implementation``); it is set explicitly here so that a
changed default can't silently turn a multi-process CPU run into one that
fails at its first psum.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import logging
import os
import pathlib
import sys
import urllib.error
import urllib.request
from typing import Sequence

from absl import flags

__all__ = [
    "DistributedInfo",
    "DistributedInitError",
    "ProcessesOutOfStep",
    "wait_for_all_processes",
    "initialize_distributed",
    "is_cloud_tpu_vm",
    "cloud_tpu_worker_count",
]

logger = logging.getLogger(__name__)

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator service, for multi-process runs on "
    "GPU/CPU machines (env JAX_COORDINATOR_ADDRESS). Not needed on Cloud TPU.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Number of processes of a multi-process run (env JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None,
    "This process's id in [0, num_processes) (env JAX_PROCESS_ID).")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None,
    "Comma-separated local device ids this process uses, e.g. one GPU per "
    "process (env JAX_LOCAL_DEVICE_IDS). Default: all local devices.")

_INIT_TIMEOUT_S = flags.DEFINE_integer(
    "distributed_init_timeout_s", 120,
    "How long jax.distributed.initialize waits for every process to join "
    "before failing with a message naming the missing ones. JAX's own "
    "default, 300 s, keeps healthy hosts waiting that long when one host's "
    "process died at startup (e.g. a stale process held its TPU).")

_ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
_ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"

# TPU chips are PCI devices of Google's vendor id (as jax's own detection).
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_METADATA_URL = ("http://metadata.google.internal/computeMetadata/v1/"
                 "instance/attributes/worker-network-endpoints")


class DistributedInitError(RuntimeError):
  """jax.distributed.initialize failed: some process did not join in time."""


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """How this process was set up: ``mode`` is explicit | tpu | single."""
  mode: str
  process_index: int
  process_count: int
  local_device_count: int
  global_device_count: int


def is_cloud_tpu_vm() -> bool:
  """True if TPU chips are attached to this machine (a Cloud TPU VM).

  Reads /sys only: it must not initialise a JAX backend.
  """
  for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if pathlib.Path(vendor_path).read_text().strip() == _GOOGLE_PCI_VENDOR_ID:
        return True
    except OSError:
      continue
  return False


def cloud_tpu_worker_count(timeout_s: float = 5.0) -> int | None:
  """Number of workers (hosts) of this TPU slice from the VM metadata.

  Returns None if the metadata server can't be read (then the caller must
  assume a multi-host slice: guessing "single host" would silently run every
  host as its own independent job).
  """
  request = urllib.request.Request(
      _METADATA_URL, headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      endpoints = response.read().decode().strip()
  except (urllib.error.URLError, OSError, ValueError):
    return None
  return len([e for e in endpoints.split(",") if e.strip()]) or None


def _flag_value(holder: flags.FlagHolder):
  """The flag's value if absl flags were parsed (they aren't in tests)."""
  return holder.value if flags.FLAGS.is_parsed() else None


def _parse_int(name: str, value: str | int | None) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def _parse_device_ids(value: str | Sequence[int | str] | None
                      ) -> list[int] | None:
  if value is None or value == "" or (not isinstance(value, str) and
                                      len(value) == 0):
    return None
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    return [int(str(v).strip()) for v in items]
  except ValueError:
    raise ValueError(
        f"local_device_ids={value!r} must be comma-separated integers, "
        "e.g. '0,1'.") from None


def _pick(explicit, holder: flags.FlagHolder, env_name: str):
  """Keyword argument, else parsed absl flag, else environment variable."""
  if explicit is not None:
    return explicit
  flag_value = _flag_value(holder)
  if flag_value is not None:
    return flag_value
  return os.environ.get(env_name) or None


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
      (default ``--distributed_init_timeout_s``, 120 s).

  Returns:
    A DistributedInfo: mode ("explicit", "tpu" or "single"), process index
    and count, local and global device counts.

  Raises:
    ValueError: an incomplete or inconsistent explicit cluster specification.
    DistributedInitError: not every process joined within the timeout, or
      the coordinator could not be reached (one line naming the cause).
  """
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  if initialization_timeout_s is None:
    initialization_timeout_s = _flag_value(_INIT_TIMEOUT_S) or _INIT_TIMEOUT_S.default
  if (isinstance(initialization_timeout_s, bool)
      or not isinstance(initialization_timeout_s, int) or initialization_timeout_s < 1):
    raise ValueError(f"initialization_timeout_s={initialization_timeout_s!r} must be an int "
                     ">= 1 (seconds).")
  coordinator_address = _pick(coordinator_address, _COORDINATOR_ADDRESS,
                              _ENV_COORDINATOR_ADDRESS)
  num_processes = _parse_int(
      "num_processes", _pick(num_processes, _NUM_PROCESSES, _ENV_NUM_PROCESSES))
  process_id = _parse_int(
      "process_id", _pick(process_id, _PROCESS_ID, _ENV_PROCESS_ID))
  local_device_ids = _parse_device_ids(
      _pick(local_device_ids, _LOCAL_DEVICE_IDS, _ENV_LOCAL_DEVICE_IDS))

  if jax.distributed.is_initialized():
    mode = "explicit" if coordinator_address else "tpu"
  elif coordinator_address or num_processes is not None or process_id is not None:
    mode = _initialize_explicit(coordinator_address, num_processes, process_id,
                                local_device_ids, initialization_timeout_s)
  elif is_cloud_tpu_vm() and (cloud_tpu_worker_count() or 2) > 1:
    # A pod slice (or metadata we could not read: see cloud_tpu_worker_count).
    _call_initialize(initialization_timeout_s, {})
    mode = "tpu"
  else:
    mode = "single"

  info = DistributedInfo(
      mode=mode,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      local_device_count=jax.local_device_count(),
      global_device_count=jax.device_count(),
  )
  logger.info(
      "JAX runtime (%s): process %d of %d, %d local / %d global devices: %s",
      info.mode, info.process_index, info.process_count,
      info.local_device_count, info.global_device_count,
      ", ".join(str(d) for d in jax.local_devices()))
  return info


def _initialize_explicit(coordinator_address: str | None,
                         num_processes: int | None, process_id: int | None,
                         local_device_ids: list[int] | None,
                         initialization_timeout_s: int) -> str:
  """Validates an explicit cluster spec and initialises; returns the mode."""
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  missing = [name for name, value in (
      ("coordinator_address", coordinator_address),
      ("num_processes", num_processes),
      ("process_id", process_id)) if value is None]
  if missing:
    raise ValueError(
        f"Incomplete multi-process setup: {', '.join(missing)} not given. "
        "A multi-process run needs all of --coordinator_address (host:port of "
        "process 0), --num_processes and --process_id (or the env vars "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
  host, sep, port = coordinator_address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
        f"coordinator_address={coordinator_address!r} must be host:port, "
        "e.g. 'host0:1234'.")
  if num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be >= 1.")
  if not 0 <= process_id < num_processes:
    raise ValueError(
        f"process_id={process_id} must be in [0, num_processes="
        f"{num_processes}).")
  if num_processes == 1 and local_device_ids is None:
    return "single"
  # Cross-process CPU collectives (psum over hosts) need an implementation;
  # gloo is the default in jax 0.10 but was not always.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  _call_initialize(initialization_timeout_s, dict(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids,
  ))
  return "explicit"


def _call_initialize(timeout_s: int, kwargs: dict) -> None:
  """jax.distributed.initialize, announced first with its deadline.

  When a process does not join in time, JAX's C++ client ends this process
  itself (a fatal "DEADLINE_EXCEEDED ... RegisterTask" log line, no Python
  exception), so the line printed before it is what explains the wait.
  """
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  where = (f"process {kwargs['process_id']} of {kwargs['num_processes']}, coordinator "
           f"{kwargs['coordinator_address']}" if kwargs else "Cloud TPU pod slice")
  print(f"jax.distributed.initialize ({where}): waiting up to {timeout_s} s for every "
        "process to join; if this process then dies with DEADLINE_EXCEEDED, a host did "
        "not start this run or exited first (see its log; e.g. a stale process held its "
        "TPU). --distributed_init_timeout_s sets the wait.", file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError etc.)
    detail = " ".join(str(e).split())[:400]
    raise DistributedInitError(
        f"jax.distributed.initialize ({where}) failed within {timeout_s} s: {detail}") from e


class ProcessesOutOfStep(RuntimeError):
  """A process did not reach a ``wait_for_all_processes`` barrier in time (one line)."""


# Each barrier id is used once; every process calls the barriers in the same
# order, so numbering them by a counter gives the same ids everywhere.
_barrier_numbers = itertools.count()


def wait_for_all_processes(name: str, timeout_s: int = 600) -> None:
  """Blocks until every process reached its same-numbered ``wait_for_all_processes``.

  A coordination-service barrier, not a device collective. Why: on CPU, a
  process that reaches a cross-process collective more than 30 s before
  another (one host slower to build its state or to compile) fails in gloo
  ("GetKeyValue() timed out") and the next collective hangs; this barrier,
  with a long timeout, lines the processes up first (see
  ``hcl_jax.compile_sync``). No-op on one process.

  Raises:
    ProcessesOutOfStep: not every process arrived within ``timeout_s``.
  """
  import jax  # here, not at import: `--help` and config errors come before JAX starts
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the runtime's client
  client = getattr(jax_distributed.global_state, "client", None)
  if client is None:
    return
  barrier = f"hcl_jax:{name}:{next(_barrier_numbers)}"
  try:
    client.wait_at_barrier(barrier, timeout_in_ms=int(timeout_s * 1000))
  except jax.errors.JaxRuntimeError as e:  # DEADLINE_EXCEEDED, or the service went away
    # (not a signal handler's exception raised while waiting here: that one goes on as it is)
    detail = " ".join(str(e).split())[:300]
    raise ProcessesOutOfStep(
        f"process {jax.process_index()} of {jax.process_count()} waited {timeout_s} s at "
        f"barrier {barrier!r} and not every process arrived (one is stuck or died: see each "
        f"process's log, WORKDIR/logs/process_<i>.log): {detail}") from e
