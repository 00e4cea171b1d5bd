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
process it is the jitted function itself: nothing changes.
"""

from __future__ import annotations

from typing import Any, Callable

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
  """``jitted`` compiled per signature, each first run after a barrier."""

  def __init__(self, jitted: Any, name: str):
    self.jitted = jitted
    self.name = name
    self._compiled: dict[tuple, Any] = {}

  def __call__(self, *args):
    key = _signature(args)
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self.jitted.lower(*args).compile()
      distributed.wait_for_all_processes(f"compiled:{self.name}")
      self._compiled[key] = compiled
    return compiled(*args)


def synced_first_call(jitted: Any, name: str) -> Callable[..., Any]:
  """``jitted`` (a ``jax.jit`` function), made safe to start on several processes.

  Args:
    jitted: the jitted function; it is called with positional arguments only.
    name: what the barrier's id (and its timeout message) names.

  Returns:
    ``jitted`` itself on one process; with several, a callable that compiles
    each new argument signature on this process, waits until every process
    has compiled it, then runs it.
  """
  if jax.process_count() == 1:
    return jitted
  return _SyncedFirstCall(jitted, name)
