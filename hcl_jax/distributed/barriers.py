"""``wait_for_all_processes``: named barriers of the coordination service,
bounded, with a one-line error naming the barrier (see ``hcl_jax.distributed``)."""

from __future__ import annotations

import itertools



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
  ``hcl_jax.distributed.compile_sync``). No-op on one process.

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
