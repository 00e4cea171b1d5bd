"""Stopping (or skipping) non-finite training steps, at no extra host sync.

The train step (``train_step.build_train_step``) reports ``nonfinite``: 0
for a good step, else a sum of the bits below, and then leaves the state as
it was. ``DivergenceMonitor`` adds those codes up on the device (one tiny
asynchronous op per step, no transfer) and the loop reads the tally only
where it syncs anyway: at log steps and before a checkpoint is written.

``config.on_nonfinite``:
- ``"stop"`` (default): the first non-finite step ends the run with a message
  naming it and what went non-finite; no checkpoint is written after it (the
  last good ones stay), no results.json, exit code 1 (``Diverged``).
- ``"skip"``: the update is dropped (the state stays at the last good one)
  and the run goes on; the count is logged (``skipped_updates``) and kept in
  results.json.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hcl_jax.config.registry import ON_NONFINITE
from hcl_jax.run.errors import Diverged  # noqa: F401  (what DivergenceMonitor.check raises)

NONFINITE_LOSS = 1
NONFINITE_GRAD_NORM = 2
NONFINITE_PARAMS = 4


def describe(code: int) -> str:
  """``"loss and gradient norm"`` for code 3, etc."""
  names = [name for bit, name in ((NONFINITE_LOSS, "loss"),
                                  (NONFINITE_GRAD_NORM, "gradient norm"),
                                  (NONFINITE_PARAMS, "updated parameters"))
           if int(code) & bit]
  return " and ".join(names) or "nothing"


@jax.jit
def _accumulate(tally: jax.Array, code: jax.Array) -> jax.Array:
  """tally = [steps seen, bad steps, index of the first bad one (1-based), its code]."""
  code = code.astype(jnp.int32)
  seen = tally[0] + 1
  bad = code != 0
  first = (tally[2] == 0) & bad
  return jnp.stack([seen, tally[1] + bad.astype(jnp.int32),
                    jnp.where(first, seen, tally[2]), jnp.where(first, code, tally[3])])


class DivergenceMonitor:
  """Tallies the step's ``nonfinite`` metric; ``check`` raises or counts."""

  def __init__(self, mode: str, start_step: int):
    if mode not in ON_NONFINITE:
      raise ValueError(f"config.on_nonfinite must be one of {ON_NONFINITE}; got {mode!r}.")
    self.mode = mode
    self.start_step = start_step
    self._tally = None
    self.skipped = 0
    self.first_bad: tuple[int, int] | None = None  # (step, code)

  def update(self, metrics: dict) -> None:
    code = metrics["nonfinite"]
    if self._tally is None:
      zeros = np.zeros((4,), np.int32)
      # Not jax.device_put: onto a sharding over several processes it runs a
      # hidden cross-process equality check (a collective), which can wait
      # forever for a process that is still compiling. Each process fills
      # its own devices' copies from its own host zeros instead.
      self._tally = (jax.make_array_from_callback(zeros.shape, code.sharding,
                                                  lambda index: zeros[index])
                     if isinstance(code, jax.Array) else jnp.asarray(zeros))
    self._tally = _accumulate(self._tally, code)

  def check(self) -> int:
    """Fetches the tally (a sync); raises Diverged in stop mode, else returns the count."""
    if self._tally is None:
      return self.skipped
    _, bad, first_index, first_code = (int(v) for v in np.asarray(jax.device_get(self._tally)))
    self.skipped = bad
    if bad:
      self.first_bad = (self.start_step + first_index, first_code)
      if self.mode == "stop":
        step, code = self.first_bad
        raise Diverged(
            f"training diverged at step {step}: non-finite {describe(code)}; stopped "
            f"without saving it (the last good checkpoints are kept). Lower "
            "config.optimizer.learning_rate, or set config.on_nonfinite='skip' to drop such "
            "updates.")
    return bad
