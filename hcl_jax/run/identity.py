"""Run identity: the settings that make two runs different experiments (an
image run's ``IDENTITY_KEYS``: dataset, image size, model, loss, optimizer,
batch size, seed, augmentation, data order; a graph run's
``hcl_jax.graph.train.IDENTITY_KEYS``), stored in every checkpoint
(``hcl_jax.run.lifecycle``). Resuming with a different identity refuses with
a one-line diff before anything is read, renamed or overwritten. More epochs
(and logging, checkpointing and evaluation settings) are not identity.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from etils import epath

from hcl_jax.run.files import CONFIG_JSON

from hcl_jax.run.errors import RunError

IDENTITY_KEY = "identity"

# Keys of the config that define the experiment. A prefix ("model") covers
# every key below it. Not here, so free to change on resume: num_epochs,
# data_dir, logging / checkpointing / evaluation settings, input-pipeline
# parallelism, on_nonfinite.
IDENTITY_KEYS = ("dataset", "image_size", "batch_size", "seed", "model", "loss",
                 "optimizer", "mixed_precision", "augment", "data.shuffle_buffer",
                 "data.mean", "data.std")


class IdentityMismatch(RunError):
  """The config is a different experiment than the checkpoints in the workdir."""


def _lookup(config: Any, key: str) -> Any:
  value = config
  for part in key.split("."):
    if value is None:
      return None
    value = value.get(part) if hasattr(value, "get") else None
  return value


def _flatten(prefix: str, value: Any, out: dict) -> None:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    for k in sorted(value):
      _flatten(f"{prefix}.{k}", value[k], out)
  elif isinstance(value, tuple):
    out[prefix] = list(value)
  else:
    out[prefix] = value


def run_identity(config: Any, keys: tuple[str, ...] = IDENTITY_KEYS) -> dict[str, Any]:
  """The config's identity: a flat, JSON-able ``{"loss.beta": 1.0, ...}`` of
  ``keys`` (an image run's ``IDENTITY_KEYS`` by default; a graph run's are
  ``hcl_jax.graph.train.IDENTITY_KEYS``)."""
  out: dict[str, Any] = {}
  for key in keys:
    _flatten(key, _lookup(config, key), out)
  # JSON round trip: what is stored is what is compared (tuples -> lists).
  return json.loads(json.dumps(out, default=str))


def identity_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """``["batch_size: 64 -> 32", ...]`` for every key that differs."""
  diffs = []
  for key in sorted(set(stored) | set(current)):
    old, new = stored.get(key, "<unset>"), current.get(key, "<unset>")
    if old != new:
      diffs.append(f"{key}: {old!r} -> {new!r}")
  return diffs


def identity_from_config_json(workdir: str | os.PathLike,
                              keys: tuple[str, ...] = IDENTITY_KEYS) -> dict[str, Any] | None:
  """The identity (of ``keys``) of the config a previous run saved in ``workdir``, if any."""
  path = epath.Path(workdir) / CONFIG_JSON
  try:
    return run_identity(json.loads(path.read_text()), keys)
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError):
    return None  # unreadable: nothing to compare with


def check_identity(stored: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                   where: str, allow_change: bool) -> list[str]:
  """Raises IdentityMismatch (one line) unless ``stored`` matches or changes are allowed.

  Returns the differences (empty when they match or nothing was stored).
  """
  if stored is None:
    return []
  diffs = identity_diff(stored, current)
  if diffs and not allow_change:
    raise IdentityMismatch(
        f"{where} was trained with a different config ({'; '.join(diffs)}); refusing to "
        "resume. Use another --workdir for a new experiment, or pass "
        "--allow_config_change to continue this run with the new settings.")
  return diffs
