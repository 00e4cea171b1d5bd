"""Checkpoints of the training run: save every N steps, keep the last K, resume.

A small wrapper over ``orbax.checkpoint.CheckpointManager``. Each checkpoint is
a directory ``<directory>/<step>/`` with two items:

- ``state``: the train-state pytree (jax.Arrays, NumPy arrays, Python
  scalars), written with ``StandardSave`` (OCDBT/zarr via TensorStore).
- ``extra``: a JSON dict for everything that is not an array: the data
  position, the RNG key (see ``rng_to_list``), the epoch, ... and, under
  ``CHECKSUM_KEY``, the CRC-32 of every array's bytes (``array_checksums``),
  written in the same step directory, so on gs:// too.

Why it is safe under a kill mid-save: orbax writes into
``<step>.orbax-checkpoint-tmp-<timestamp>/`` and renames it to ``<step>/``
only once every file is written (on GCS, where there is no atomic rename, a
``commit_success.txt`` marks a finished step instead). Unfinished directories
are not listed as checkpoints and are deleted when the next ``Checkpointer``
opens the directory. A checkpoint that is listed but can't be read back
(truncated or deleted files, undecodable bytes) or whose restored arrays do
not match the CRC-32 saved with them (one flipped byte in the array data
decompresses fine but changes a weight) is reported with a warning naming its
step, renamed to
``<step>.unreadable-<unix time>`` so that later saves of that step number and
orbax's retention are not confused by it, and the previous one is used.
"Unreadable" means corrupt: a checkpoint whose saved tree, shapes or dtypes
differ from the template's in any way (another model: a leaf added or
removed, a shape grown or shrunk; read from its metadata before any array)
raises ``IncompatibleCheckpoint`` and is left alone, and a ``read_only`` Checkpointer (``evaluate``) never renames,
cleans up or saves anything.

With several processes every process checks each step (metadata, restore,
checksums of the arrays it holds) and the verdicts are all-gathered
(``agreed_verdict``): every host takes the same branch (restore, set aside,
refuse) and meets the same barriers.

Saving is asynchronous by default: ``maybe_save`` returns once the arrays are
copied to host memory (so the caller may donate or delete them right away),
and the files are written in a background thread. Call ``wait()`` (or
``close()``) before the process exits, or the last checkpoint is lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from hcl_jax.run import workdir_fs
from hcl_jax.run.checkpoint_integrity import (CHECKSUM_KEY, OTHER_MODEL, READABLE, UNREADABLE,
                                              IncompatibleCheckpoint, agree, array_checksums,
                                              checksum_mismatches, tree_difference)
from hcl_jax.run.orbax_logs import quiet_closed_loop_errors, quiet_os_error_records

_log = logging.getLogger(__name__)

STATE_ITEM = "state"
EXTRA_ITEM = "extra"
UNREADABLE_SUFFIX = ".unreadable-"


class Restored(NamedTuple):
  """What ``Checkpointer.restore_latest`` returns."""
  step: int     # the step number the checkpoint was saved under
  state: Any    # the state pytree, same structure/shardings as the template
  extra: dict   # the JSON dict given to ``maybe_save``


def rng_to_list(key: jax.Array) -> list:
  """A JSON-able nested list of the key's uint32 words (typed or raw key)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(jax.device_get(key)).tolist()


def rng_from_list(data: list, *, typed: bool = True,
                  impl: str | None = None) -> jax.Array:
  """Inverse of ``rng_to_list``: a typed key (``jax.random.key``) or, with
  ``typed=False``, the raw uint32 key array (``jax.random.PRNGKey``)."""
  words = np.asarray(data, dtype=np.uint32)
  if not typed:
    return jax.numpy.asarray(words)
  return jax.random.wrap_key_data(words, impl=impl)


def _as_restore_target(path, leaf):
  """jax.Array -> ShapeDtypeStruct with its sharding; anything else as is.

  Orbax restores each array straight into the template leaf's sharding (so a
  replicated or batch-sharded mesh array comes back sharded the same way);
  NumPy arrays and Python scalars come back as their own type.
  """
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
    raise ValueError(
        f"template leaf {jax.tree_util.keystr(path)} is a ShapeDtypeStruct "
        "without a sharding; give it one (e.g. jax.ShapeDtypeStruct(shape, "
        "dtype, sharding=hcl_jax.distributed.mesh.replicated(mesh))) or pass concrete "
        "arrays.")
  return leaf


def _check_json(extra: dict) -> dict:
  if not isinstance(extra, dict):
    raise ValueError(f"extra must be a dict of JSON values, got {type(extra)}")
  try:
    json.dumps(extra, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"extra must hold only JSON values (str, int, float, bool, None, "
        f"lists, dicts); got {extra!r}: {e}. Convert arrays with .tolist() "
        "and RNG keys with rng_to_list().") from e
  return extra


class Checkpointer:
  """Periodic, pruned, preemption-safe checkpoints of one training run.

  Every process of a multi-host job must create it and call ``maybe_save`` /
  ``restore_latest`` with the same arguments (orbax synchronises them and
  writes each array shard from the process that holds it).

  Example::

    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                        save_every_steps=config.checkpoint_every_steps)
    restored = ckpt.restore_latest(state)        # state: freshly initialised
    if restored is not None:
      step, state, extra = restored
    ...
    for step in range(start_step + 1, total_steps + 1):
      state = train_step(state, batch)
      ckpt.maybe_save(step, state, {"data_step": ..., "rng": rng_to_list(rng)},
                      force=step == total_steps or guard.should_stop_at(step))
    ckpt.close()                                 # waits for the async write
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int,
               save_every_steps: int, async_save: bool = True,
               read_only: bool = False):
    """Args:
      directory: where the step directories go (created if missing); a
        local path or a gs:// URL.
      keep: how many of the newest checkpoints to keep (>= 1).
      save_every_steps: ``maybe_save`` saves when ``step % save_every_steps
        == 0`` (>= 1); ``force=True`` saves regardless.
      async_save: write files in a background thread (see module docstring).
      read_only: for readers of another run's checkpoints (``evaluate``):
        nothing in ``directory`` is created, cleaned up, renamed or saved.
    """
    if not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    if not isinstance(save_every_steps, int) or save_every_steps < 1:
      raise ValueError(
          f"save_every_steps must be an int >= 1, got {save_every_steps!r}")
    self.directory = workdir_fs.as_path(directory)  # absolute: orbax needs it
    self.keep = keep
    self.save_every_steps = save_every_steps
    self.read_only = read_only
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0, max_to_keep=None,
          cleanup_tmp_directories=False, enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep,
          # We decide when to save (``maybe_save``); orbax's own interval
          # check would also refuse any step <= the latest saved one.
          save_interval_steps=1,
          create=True,
          cleanup_tmp_directories=True,  # leftovers of killed saves
          enable_async_checkpointing=async_save,
      )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    quiet_closed_loop_errors().__enter__()  # failed saves print the same noise
    quiet_os_error_records()

  # -- queries ---------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int, *, force: bool = False) -> bool:
    """Whether ``maybe_save(step, ..., force=force)`` would write."""
    if step in self._manager.all_steps():
      return False  # e.g. the final step was also a periodic one
    return force or step % self.save_every_steps == 0

  # -- saving ----------------------------------------------------------------

  def maybe_save(self, step: int, state: Any, extra: dict | None = None, *,
                 force: bool = False) -> bool:
    """Saves ``state`` and ``extra`` as checkpoint ``step`` if it is due.

    Args:
      step: number of completed train steps that ``state`` reflects (>= 0).
      state: the train-state pytree.
      extra: JSON-able dict (data position, RNG words, epoch, ...).
      force: save even off the ``save_every_steps`` grid (end of training,
        preemption). A step that is already saved is never rewritten.

    Returns:
      True if a save was started (it may still be writing: see ``wait``).
    """
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be an int >= 0, got {step!r}")
    step = int(step)
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read_only; it can't be saved to.")
    extra = _check_json(dict(extra or {}))
    if CHECKSUM_KEY in extra:
      raise ValueError(f"extra must not use the reserved key {CHECKSUM_KEY!r}")
    if not self.should_save(step, force=force):
      return False
    # Computed from the same values orbax copies to host now (the arrays may
    # be donated right after this returns).
    extra[CHECKSUM_KEY] = array_checksums(state)
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            EXTRA_ITEM: ocp.args.JsonSave(extra),
        }),
        force=True)
    if saved:
      _log.info("Saving checkpoint step %d to %s", step, self.directory)
    return bool(saved)

  def wait(self) -> None:
    """Blocks until the pending asynchronous save (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- restoring -------------------------------------------------------------

  def read_extra(self, step: int) -> dict | None:
    """The ``extra`` dict of checkpoint ``step`` alone, or None if unreadable."""
    try:
      with quiet_closed_loop_errors():
        out = self._manager.restore(
            step, args=ocp.args.Composite(**{EXTRA_ITEM: ocp.args.JsonRestore()}))
      extra = dict(out[EXTRA_ITEM])
      extra.pop(CHECKSUM_KEY, None)
      return extra
    except Exception:  # pylint: disable=broad-except
      return None

  def newest_extra(self) -> tuple[int, dict] | None:
    """(step, extra) of the newest checkpoint whose ``extra`` reads back
    (on every process: they agree on the step)."""
    self._manager.reload()
    for step in sorted(self._manager.all_steps(), reverse=True):
      extra = self.read_extra(step)
      if agree(UNREADABLE if extra is None else READABLE) == READABLE:
        return step, extra
    return None

  def restore_latest(self, template: Any) -> Restored | None:
    """Restores the newest readable checkpoint, or None if there is none.

    Args:
      template: a pytree with the state's structure: concrete arrays (e.g.
        the freshly initialised state) or ShapeDtypeStructs carrying a
        sharding. jax.Array leaves come back with the template's sharding.

    Returns:
      ``Restored(step, state, extra)``, or None when the directory holds no
      readable checkpoint. Every unreadable checkpoint newer than the one
      used (a read error, or arrays whose CRC-32 differs from the one saved
      with them) is logged as a warning naming its step and renamed out of
      the way (``<step>.unreadable-<time>``, kept for inspection; in
      ``read_only`` mode only skipped).

    Raises:
      IncompatibleCheckpoint: the newest checkpoint's metadata holds a tree,
        shapes or dtypes other than the template's (another model or
        optimizer): nothing is renamed then.
    """
    target = jax.tree_util.tree_map_with_path(_as_restore_target, template)
    self.wait()
    self._manager.reload()  # other runs may have written since we opened it
    unreadable = []
    restored = None
    for step in sorted(self._manager.all_steps(), reverse=True):
      verdict, detail, out = self._try_restore(step, target)
      verdict = agree(verdict)
      if verdict == OTHER_MODEL:
        raise IncompatibleCheckpoint(
            f"checkpoint {step} in {self.directory} holds a different model "
            f"({detail or 'so says another process'}): another model or optimizer; every "
            "checkpoint is left intact. Use another workdir for this config.")
      if verdict == UNREADABLE:
        _log.warning(
            "Checkpoint step %d in %s is unreadable (%s); falling back to the previous "
            "checkpoint.", step, self.directory, detail or "on another process")
        unreadable.append(step)
        continue
      extra = dict(out[EXTRA_ITEM])
      extra.pop(CHECKSUM_KEY, None)
      restored = Restored(step, out[STATE_ITEM], extra)
      break
    self._set_aside(unreadable)
    if restored is None:
      if unreadable:
        _log.warning(
            "No readable checkpoint in %s (unreadable steps: %s); starting "
            "from scratch.", self.directory, unreadable)
      return None
    if unreadable:
      _log.warning("Resuming from checkpoint step %d in %s instead of the "
                   "unreadable step(s) %s.", restored.step, self.directory,
                   unreadable)
    else:
      _log.info("Resuming from checkpoint step %d in %s", restored.step,
                self.directory)
    return restored

  def _try_restore(self, step: int, target: Any) -> tuple[int, str, Any]:
    """(verdict, why, restored items) of checkpoint ``step`` on this process.

    The saved tree's metadata is compared with ``target`` before any array
    is read, so that another model is never mistaken for damage; then the
    arrays are restored and their CRC-32 compared with the saved ones.
    """
    try:
      saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / STATE_ITEM)
      saved = getattr(saved, "tree", saved)
    except Exception as e:  # pylint: disable=broad-except
      return UNREADABLE, f"its metadata: {type(e).__name__}: {_first_line(e)}", None
    mismatch = tree_difference(saved, target)
    if mismatch:
      return OTHER_MODEL, mismatch, None
    try:
      with quiet_closed_loop_errors():
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(target),
                EXTRA_ITEM: ocp.args.JsonRestore(),
            }))
    except Exception as e:  # pylint: disable=broad-except
      # TensorStore DATA_LOSS, JSON decode errors, missing items: this
      # checkpoint can't be trusted.
      return UNREADABLE, f"{type(e).__name__}: {_first_line(e)}", None
    saved_crc = dict(out[EXTRA_ITEM]).get(CHECKSUM_KEY)
    if saved_crc is not None:  # checkpoints of older versions have none
      bad = checksum_mismatches(saved_crc, out[STATE_ITEM])
      if bad:
        return (UNREADABLE, f"CRC-32 mismatch in {len(bad)} array(s), e.g. {bad[0]}: the "
                "array data changed after it was written", None)
    return READABLE, "", out

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable step dirs so that orbax no longer lists them.

    Left in place, a newer unreadable step would make orbax refuse to save
    that step number again and make retention prune the good ones first.
    """
    if not steps or self.read_only:
      return
    if jax.process_index() == 0:
      stamp = int(time.time())
      for step in steps:
        src = self.directory / str(step)
        dst = self.directory / f"{step}{UNREADABLE_SUFFIX}{stamp}"
        try:
          src.rename(dst)
          _log.warning("Renamed unreadable checkpoint %s to %s", src, dst)
        except Exception as e:  # pylint: disable=broad-except
          # e.g. object stores without directory rename: delete instead.
          _log.warning("Could not rename %s (%s); deleting it.", src, e)
          src.rmtree(missing_ok=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("hcl_jax_checkpoint_set_aside")
    self._manager.reload()


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  line = text.splitlines()[0] if text else ""
  return line[:300]
