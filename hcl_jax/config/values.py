"""Value checks shared by every entry point: one way to say "an int >= 1".

Light (the standard library only). Each check returns the value or raises a
ValueError whose message names the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
  """An integer that is not a bool (numpy integers count)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """An int or float that is not a bool (numpy scalars count)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(name: str, value: Any, minimum: int) -> int:
  """``value`` as an int if it is one and ``>= minimum``; else ValueError naming ``name``."""
  if not is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
  return int(value)


def positive_int_arg(text: str) -> int:
  """argparse ``type=`` for an int >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def positive_number(name: str, value: Any) -> float:
  """``value`` as a float if it is finite and ``> 0``; else ValueError naming ``name``."""
  return _finite_float(name, value, "> 0", lambda v: v > 0)


def nonnegative_number(name: str, value: Any) -> float:
  """``value`` as a float if it is finite and ``>= 0``; else ValueError naming ``name``."""
  return _finite_float(name, value, ">= 0", lambda v: v >= 0)


def _finite_float(name: str, value: Any, allowed: str, in_range) -> float:
  # float(), not is_number: what converts (numpy and JAX scalars, "1e-3")
  # is accepted, as the evaluators always have.
  message = f"{name} must be a finite number {allowed}; got {value!r}."
  try:
    value_f = float(value)
  except (TypeError, ValueError):
    raise ValueError(message) from None
  if not math.isfinite(value_f) or not in_range(value_f):
    raise ValueError(message)
  return value_f


def parse_step_range(text: str) -> tuple[int, int] | None:
  """``"N,M"`` -> (N, M) with 1 <= N <= M; ``""`` -> None (no profile).

  ValueError, one line naming the value, for anything else.
  """
  if text == "":
    return None
  parts = text.split(",") if isinstance(text, str) else []
  try:
    first, last = (int(p) for p in parts)
  except ValueError:
    first = last = None
  if first is None or not 1 <= first <= last:
    raise ValueError(f"config.profile_steps must be \"\" (no profile) or \"N,M\" with "
                     f"1 <= N <= M (steps N to M traced); got {text!r}.")
  return first, last
