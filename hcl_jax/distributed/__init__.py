"""Multi-process runtime initialisation: one call, before JAX touches a backend.

``initialize_distributed()`` is the first thing the training entry point does.
It reads where it runs from, in this order (``detect_cluster``; the first
that applies wins; the README's "What is read where" table lists each
variable):

1. **Explicit cluster** (GPU or CPU machines): a coordinator address, the
   number of processes and this process's id, as keyword arguments, as the
   absl flags ``--coordinator_address``, ``--num_processes``,
   ``--process_id``, ``--local_device_ids`` (defined by this module), or as the
   environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
   ``JAX_PROCESS_ID``, ``JAX_LOCAL_DEVICE_IDS`` (in that order of precedence).
2. **GKE TPU** (a JobSet pod, as xpk or ``launch/gke.py`` make): GKE injects
   ``TPU_WORKER_HOSTNAMES`` (or ``TPU_PROCESS_ADDRESSES``) and
   ``TPU_WORKER_ID``; multislice adds ``MEGASCALE_NUM_SLICES``,
   ``MEGASCALE_SLICE_ID``, ``MEGASCALE_COORDINATOR_ADDRESS``. Process id,
   count and the coordinator (worker 0, port 8482 as JAX's TPU default, or
   ``JAX_COORDINATOR_PORT``) are computed from them as JAX's own GKE
   detection does, but read first: the VM metadata a TPU VM would consult
   describes the node, not the JobSet.
3. **SLURM** (``srun`` with several tasks): ``SLURM_NTASKS``,
   ``SLURM_PROCID``, ``SLURM_STEP_NODELIST``, ``SLURM_JOB_ID`` give the count,
   the id and the coordinator (the step's first node, port
   ``SLURM_JOB_ID % 4096 + 61440`` as JAX's SLURM detection, or
   ``JAX_COORDINATOR_PORT``). One task: a single process.
4. **Multi-host Cloud TPU VM** (a pod slice): TPU chips are attached to this VM
   and the TPU metadata lists more than one worker, or cannot be read. Calls
   ``jax.distributed.initialize()`` with no arguments; JAX finds the workers,
   this worker's id and the coordinator from the TPU metadata itself.
5. **Single process** (a laptop, one GPU machine, a single-host TPU VM such as
   v4-8): nothing to do; every local device is already in ``jax.devices()``.

Every multi-process start is bounded: if not every process joined within
``--distributed_init_timeout_s`` (env ``HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S``,
default 120 s), the process prints one line, ``error: DistributedInitError:
...`` naming the coordinator, the process count and the timeout, and exits 1
(a watchdog thread: at its own deadline JAX aborts the process from C++,
rc 134, with a DEADLINE_EXCEEDED log and a C++ stack trace that name neither).

After it, ``jax.devices()`` lists every device of every process, so the mesh
of ``hcl_jax.distributed.mesh.make_mesh()`` spans the whole slice.

On CPU, cross-process collectives use gloo, JAX's default since 0.4.3x
(``jax_cpu_collectives_implementation``); it is set explicitly here so that a
changed default can't silently turn a multi-process CPU run into one that
fails at its first psum.
"""


from hcl_jax.distributed.barriers import ProcessesOutOfStep, wait_for_all_processes
from hcl_jax.distributed.cluster import (ClusterSpec, DistributedInitError, cloud_tpu_worker_count,
                                        detect_cluster, first_slurm_host, is_cloud_tpu_vm)
from hcl_jax.distributed.runtime import DistributedInfo, initialize_distributed

__all__ = [
    "ClusterSpec",
    "DistributedInfo",
    "DistributedInitError",
    "ProcessesOutOfStep",
    "wait_for_all_processes",
    "detect_cluster",
    "first_slurm_host",
    "initialize_distributed",
    "is_cloud_tpu_vm",
    "cloud_tpu_worker_count",
]
