"""What makes a checkpoint trustworthy, for ``hcl_jax.run.checkpointing``:
the CRC-32 of every array saved with the step and checked on restore, the
tree/shape/dtype comparison that tells another model from damage, and one
verdict per step agreed by every process."""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

# Key of ``extra`` holding {leaf path: CRC-32 of its bytes}; not returned to callers.
CHECKSUM_KEY = "_array_crc32"

# What one process found of one checkpoint step, ordered so that the worst
# (the largest) wins when processes disagree (``agreed_verdict``).
READABLE, UNREADABLE, OTHER_MODEL = 0, 1, 2


def _host_value(leaf: Any) -> np.ndarray | None:
  """The whole value of ``leaf`` as this process sees it; None where it
  holds only part of it (a sharded array on several hosts: not checked)."""
  if isinstance(leaf, jax.Array):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if leaf.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    if leaf.is_fully_addressable:
      return np.asarray(leaf)
    return None
  if isinstance(leaf, (np.ndarray, np.generic)):
    return np.asarray(leaf)
  return None  # Python scalars: stored in JSON-like metadata, not array data


def array_checksums(state: Any) -> dict[str, int]:
  """{leaf path: CRC-32 of its C-order bytes} for every array leaf this
  process holds whole (see ``_host_value``)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    value = _host_value(leaf)
    if value is not None:
      out[jax.tree_util.keystr(path)] = zlib.crc32(np.ascontiguousarray(value).tobytes())
  return out


def checksum_mismatches(saved: dict, state: Any) -> list[str]:
  """Leaf paths whose restored bytes differ from the saved CRC-32."""
  actual = array_checksums(state)
  return sorted(k for k, crc in saved.items() if k in actual and actual[k] != int(crc))


def agreed_verdict(verdicts: Any) -> int:
  """One verdict for a step from every process's: the worst one.

  A step is used only if every process restored it intact; a process that
  found another model outranks one that found damage (nothing is renamed).
  """
  return int(np.max(np.asarray(verdicts, dtype=np.int64)))


def agree(verdict: int) -> int:
  """``agreed_verdict`` over every process (an all-gather); the same int on each."""
  if jax.process_count() == 1:
    return verdict
  from jax.experimental import multihost_utils
  return agreed_verdict(multihost_utils.process_allgather(np.asarray([verdict], np.int32)))


def _key_name(entry: Any) -> str:
  return str(getattr(entry, "name", getattr(entry, "key", getattr(entry, "idx", entry))))


def _leaves_by_name(tree: Any) -> dict[tuple[str, ...], Any]:
  """{("opt_state", "0", "mu", "kernel"): leaf}: paths by name only, since the
  saved metadata holds dicts and lists where the state has named tuples."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
  return {tuple(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _dtype(leaf: Any) -> np.dtype | None:
  """The NumPy dtype of an array leaf; None for Python scalars and key arrays."""
  try:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") and hasattr(leaf, "shape") else None
  except TypeError:
    return None


def tree_difference(saved: Any, target: Any) -> str | None:
  """How a checkpoint's saved tree metadata differs from ``target``: a leaf
  added or removed, any shape or array dtype not equal; None when equal."""
  saved, wanted = _leaves_by_name(saved), _leaves_by_name(target)
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  if only_saved or only_wanted:
    example = "/".join((only_saved or only_wanted)[0])
    return (f"{len(only_saved)} saved arrays not in this config's state, "
            f"{len(only_wanted)} of its arrays not saved, e.g. {example}")
  for key, leaf in wanted.items():
    have = saved[key]
    saved_shape, shape = tuple(getattr(have, "shape", ())), tuple(np.shape(leaf))
    if saved_shape != shape:
      return f"{'/'.join(key)} has shape {saved_shape} saved, {shape} in this config"
    if _dtype(have) is not None and _dtype(leaf) is not None:
      if _dtype(have) != _dtype(leaf):
        return (f"{'/'.join(key)} has dtype {_dtype(have)} saved, "
                f"{_dtype(leaf)} in this config")
  return None


class IncompatibleCheckpoint(ValueError):
  """An intact checkpoint whose state does not fit the template."""
