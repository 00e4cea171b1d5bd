"""Value checks shared by every entry point: one way to say "an int >= 1".

Light (the standard library only). Each check returns the value or raises a
ValueError whose message names the value and what is allowed.
"""

from __future__ import annotations

import argparse
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
