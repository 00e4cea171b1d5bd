"""Every process compiles a program, then they all start it together.

Why: a program with cross-process collectives (the train step's gradient
all-reduce, the readout's, the kNN's gathers) runs its first collective as
soon as a process has compiled it. Processes compile at very different
speeds: JAX reads and writes the persistent compilation cache from process 0
only (and on CPU its key includes the local device fingerprint), so after a
cache hit process 0 starts the train step at once while process 1 spends
35-40 s compiling it. A collective whose peer is that far behind fails:
XLA:CPU's Gloo communicator gives up after 30 s (jax-ml/jax#40831) and
stores the failure silently, and the next collective then waits forever on
every process. On a pod the same pattern (one host far behind at its first
collective) hits whatever timeout the interconnect's runtime has.

``synced_first_call(jitted, name)`` removes the pattern: on a new argument
signature it compiles ahead of time (``jitted.lower(*args).compile()``),
waits at a coordination-service barrier (``distributed.wait_for_all_processes``,
not a device collective, with a long timeout), and only then runs. Later
calls with that signature go straight to the compiled program. On one
process there is no barrier, but the first call is compiled ahead of time
all the same: the caller can time the compilation apart from the run
(``compile``) and read the program's cost analysis (``lowered``, ``compiled``),
which the run's throughput and MFU logging need (``hcl_jax.train.throughput``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from hcl_jax import distributed

__all__ = ["synced_first_call"]


def _signature(args: tuple) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple(
      (np.shape(x), str(np.result_type(x)), getattr(x, "sharding", None),
       isinstance(x, (int, float, bool)))  # Python scalars are weakly typed
      for x in leaves)


class _SyncedFirstCall:
  """``jitted`` compiled per signature, each first run after a barrier
  (with several processes).

  Attributes:
    lowered: the most recently compiled program before compilation
      (``jax.stages.Lowered``: its ``cost_analysis()`` is the global one).
    compiled: the most recently compiled program (``jax.stages.Compiled``:
      ``cost_analysis()``, ``memory_analysis()``), None before any call.
    compile_seconds: how long compiling it took on this process (the
      barrier's wait not included).
  """

  def __init__(self, jitted: Any, name: str):
    self.jitted = jitted
    self.name = name
    self.lowered: Any = None
    self.compiled: Any = None
    self.compile_seconds: float | None = None
    self._compiled: dict[tuple, Any] = {}

  def compile(self, *args) -> Any:
    """The program for ``args``' signature: compiled (and, with several
    processes, waited for on every process) the first time, then reused.
    Nothing runs; ``args`` (donated buffers included) stay valid."""
    key = _signature(args)
    compiled = self._compiled.get(key)
    if compiled is None:
      start = time.perf_counter()
      lowered = self.jitted.lower(*args)
      compiled = lowered.compile()
      self.compile_seconds = time.perf_counter() - start
      if jax.process_count() > 1:
        distributed.wait_for_all_processes(f"compiled:{self.name}")
      self._compiled[key] = compiled
      self.lowered, self.compiled = lowered, compiled
    return compiled

  def __call__(self, *args):
    return self.compile(*args)(*args)


def synced_first_call(jitted: Any, name: str) -> _SyncedFirstCall:
  """``jitted`` (a ``jax.jit`` function), made safe to start on several processes.

  Args:
    jitted: the jitted function; it is called with positional arguments only.
    name: what the barrier's id (and its timeout message) names.

  Returns:
    a callable that compiles each new argument signature ahead of time on
    this process, with several processes waits until every process has
    compiled it, then runs it (:class:`_SyncedFirstCall`).
  """
  return _SyncedFirstCall(jitted, name)
