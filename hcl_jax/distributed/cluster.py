"""Where this process runs: the runtime flags and ``detect_cluster`` (explicit,
GKE TPU, SLURM, Cloud TPU VM, single process). See ``hcl_jax.distributed``."""

from __future__ import annotations

import dataclasses
import glob
import pathlib
import re
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

from absl import flags

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
    "distributed_init_timeout_s", None,
    "How long jax.distributed.initialize waits for every process to join "
    "before the process ends with one line naming the coordinator, the "
    "process count and this timeout (exit 1). Default 120 s, or env "
    "HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S. JAX's own default, 300 s, keeps "
    "healthy hosts waiting that long when one host's process died at startup "
    "(e.g. a stale process held its TPU).")
_DEFAULT_INIT_TIMEOUT_S = 120
_ENV_INIT_TIMEOUT = "HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S"
# JAX's own deadline is this much later than ours, so that our one-line
# error, not JAX's fatal abort, ends a process whose peers never came.
_JAX_DEADLINE_MARGIN_S = 60

_ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
_ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"
_ENV_COORDINATOR_PORT = "JAX_COORDINATOR_PORT"   # JAX's own override, honoured the same way
# JAX's defaults (jax/_src/clusters/cloud_tpu_cluster.py, slurm_cluster.py).
_TPU_COORDINATOR_PORT = 8482
_SLURM_PORT_BASE, _SLURM_PORT_RANGE = 65535 - 2**12 + 1, 2**12

# TPU chips are PCI devices of Google's vendor id (as jax's own detection).
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_METADATA_URL = ("http://metadata.google.internal/computeMetadata/v1/"
                 "instance/attributes/worker-network-endpoints")


class DistributedInitError(RuntimeError):
  """jax.distributed.initialize failed: some process did not join in time."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """Where this process runs, as ``detect_cluster`` read it.

  ``mode``: explicit | gke-tpu | slurm | tpu (Cloud TPU VM metadata, read by
  JAX itself: the other fields are None) | single. ``source``: what was read,
  for the log and for errors.
  """
  mode: str
  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: list[int] | None = None




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


def _pick(explicit, holder: flags.FlagHolder, env: Mapping[str, str], env_name: str):
  """Keyword argument, else parsed absl flag, else environment variable."""
  if explicit is not None:
    return explicit
  flag_value = _flag_value(holder)
  if flag_value is not None:
    return flag_value
  return env.get(env_name) or None


def _init_timeout_s(explicit: int | None, env: Mapping[str, str]) -> int:
  """Keyword argument, else --distributed_init_timeout_s, else env, else 120."""
  value = _pick(explicit, _INIT_TIMEOUT_S, env, _ENV_INIT_TIMEOUT)
  if value is None:
    return _DEFAULT_INIT_TIMEOUT_S
  if isinstance(value, str):
    value = _parse_int(_ENV_INIT_TIMEOUT, value)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"initialization_timeout_s={value!r} must be an int >= 1 (seconds).")
  return value


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
  value = _parse_int(name, env.get(name))
  return default if value is None else value


def _coordinator_port(env: Mapping[str, str], default: int) -> int:
  port = _env_int(env, _ENV_COORDINATOR_PORT, default)
  if not 0 < port < 65536:
    raise ValueError(f"{_ENV_COORDINATOR_PORT}={port} must be a port in [1, 65535].")
  return port


def _gke_tpu(env: Mapping[str, str]) -> ClusterSpec | None:
  """GKE TPU pod: the worker list and this worker's index, as GKE injects them."""
  names = ("TPU_PROCESS_ADDRESSES" if env.get("TPU_PROCESS_ADDRESSES")
           else "TPU_WORKER_HOSTNAMES")
  workers = [w.strip() for w in env.get(names, "").split(",") if w.strip()]
  if not workers:
    return None
  worker_id = _env_int(env, "TPU_WORKER_ID")
  if worker_id is None:
    raise ValueError(f"{names} is set ({len(workers)} workers) but TPU_WORKER_ID is not: "
                     "a GKE TPU pod has both (see the README's 'What is read where').")
  slices = _env_int(env, "MEGASCALE_NUM_SLICES", 1)
  slice_id = _env_int(env, "MEGASCALE_SLICE_ID", 0)
  if not 0 <= worker_id < len(workers) or slices < 1 or not 0 <= slice_id < slices:
    raise ValueError(f"TPU_WORKER_ID={worker_id} (of {len(workers)} workers in {names}), "
                     f"MEGASCALE_SLICE_ID={slice_id} of MEGASCALE_NUM_SLICES={slices}: "
                     "each id must be in [0, count).")
  count = len(workers) * slices
  source = f"{names} ({len(workers)} workers), TPU_WORKER_ID={worker_id}" + (
      f", slice {slice_id} of {slices}" if slices > 1 else "")
  if count == 1:
    return ClusterSpec(mode="single", source=source)
  # Worker 0 of slice 0 (JAX's choice too): "host" or "host:port" or an old
  # "name:id:ip" endpoint; the coordinator port is JAX's, not the entry's.
  host = env.get("MEGASCALE_COORDINATOR_ADDRESS") or workers[0]
  host = host.split(":")[2] if host.count(":") == 2 else host.split(":")[0]
  return ClusterSpec(
      mode="gke-tpu", source=source,
      coordinator_address=f"{host}:{_coordinator_port(env, _TPU_COORDINATOR_PORT)}",
      num_processes=count, process_id=worker_id + slice_id * len(workers))


def first_slurm_host(node_list: str) -> str:
  """The first host of a SLURM node list: 'n1', 'n1,n2', 'n[001-004],m1',
  'n[001,007-015]' -> 'n1', 'n1', 'n001', 'n001' (as JAX's SLURM detection)."""
  first = node_list.split(",", 1)[0]
  if "[" not in first:
    return first
  prefix, _, ranges = node_list.partition("[")
  return prefix + re.split(r"[,\-\]]", ranges)[0]


def _slurm(env: Mapping[str, str]) -> ClusterSpec | None:
  """``srun`` with several tasks: SLURM's task count, rank, node list, job id."""
  tasks = _env_int(env, "SLURM_NTASKS")
  if tasks is None or "SLURM_JOB_ID" not in env:
    return None
  if tasks == 1:
    return ClusterSpec(mode="single", source="SLURM_NTASKS=1")
  missing = [name for name in ("SLURM_PROCID", "SLURM_STEP_NODELIST") if name not in env]
  if missing:
    raise ValueError(
        f"SLURM_NTASKS={tasks} but {', '.join(missing)} unset: this is the batch script, "
        "not one of its tasks. Start the trainer with srun (launch/slurm.py writes the "
        "sbatch script), or pass --num_processes etc. explicitly.")
  rank = _env_int(env, "SLURM_PROCID")
  if not 0 <= rank < tasks:
    raise ValueError(f"SLURM_PROCID={rank} must be in [0, SLURM_NTASKS={tasks}).")
  job_id = _env_int(env, "SLURM_JOB_ID")
  port = _coordinator_port(env, job_id % _SLURM_PORT_RANGE + _SLURM_PORT_BASE)
  # Several tasks on one node share its devices: each drives the one of its
  # local rank (JAX's SLURM rule). One task per node (launch/slurm.py): all.
  # SLURM_STEP_TASKS_PER_NODE: "2(x3),1" = 2 tasks on each of 3 nodes, 1 on one.
  per_node = [int(m) for m in re.findall(r"(?:^|,)(\d+)",
                                         env.get("SLURM_STEP_TASKS_PER_NODE", "1"))]
  local_ids = ([_env_int(env, "SLURM_LOCALID", 0)]
               if max(per_node, default=1) > 1 else None)
  return ClusterSpec(
      mode="slurm",
      source=f"SLURM_NTASKS={tasks}, SLURM_PROCID={rank}, job {job_id}",
      coordinator_address=f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}",
      num_processes=tasks, process_id=rank, local_device_ids=local_ids)


def _explicit(coordinator_address: str | None, num_processes: int | None,
              process_id: int | None, local_device_ids: list[int] | None) -> ClusterSpec:
  """Validates an explicit cluster spec."""
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
  source = "--coordinator_address/--num_processes/--process_id or JAX_* variables"
  if num_processes == 1 and local_device_ids is None:
    return ClusterSpec(mode="single", source=source)
  return ClusterSpec(mode="explicit", source=source,
                     coordinator_address=coordinator_address, num_processes=num_processes,
                     process_id=process_id, local_device_ids=local_device_ids)


def detect_cluster(
    env: Mapping[str, str],
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    on_cloud_tpu_vm: Callable[[], bool] = lambda: is_cloud_tpu_vm(),
    tpu_worker_count: Callable[[], int | None] = lambda: cloud_tpu_worker_count(),
) -> ClusterSpec:
  """Where this process runs: the first of explicit, GKE TPU, SLURM, Cloud
  TPU VM, single process that applies (the module docstring says why this
  order). Reads ``env``, the parsed flags and the two callables only (no
  JAX): a pure function of them.

  Raises:
    ValueError: an incomplete or inconsistent specification (one line).
  """
  coordinator_address = _pick(coordinator_address, _COORDINATOR_ADDRESS, env,
                              _ENV_COORDINATOR_ADDRESS)
  num_processes = _parse_int(
      "num_processes", _pick(num_processes, _NUM_PROCESSES, env, _ENV_NUM_PROCESSES))
  process_id = _parse_int(
      "process_id", _pick(process_id, _PROCESS_ID, env, _ENV_PROCESS_ID))
  local_device_ids = _parse_device_ids(
      _pick(local_device_ids, _LOCAL_DEVICE_IDS, env, _ENV_LOCAL_DEVICE_IDS))
  if coordinator_address or num_processes is not None or process_id is not None:
    return _explicit(coordinator_address, num_processes, process_id, local_device_ids)
  for detect in (_gke_tpu, _slurm):
    spec = detect(env)
    if spec is not None:
      return spec
  if on_cloud_tpu_vm():
    workers = tpu_worker_count()
    if (workers or 2) > 1:   # None: metadata unreadable, see cloud_tpu_worker_count
      return ClusterSpec(mode="tpu", source=f"Cloud TPU VM metadata ({workers or '?'} workers)",
                         num_processes=workers)
    return ClusterSpec(mode="single", source="Cloud TPU VM metadata (1 worker)")
  return ClusterSpec(mode="single", source="no cluster variables")


