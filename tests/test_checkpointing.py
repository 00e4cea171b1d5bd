"""Checkpointer (orbax wrapper) and PreemptionGuard."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import glob  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcl_jax.run.checkpointing import (Checkpointer, rng_from_list,
                                   rng_to_list)
from hcl_jax.distributed.mesh import make_mesh, replicated
from hcl_jax.run.preemption import PreemptionGuard

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy_state(seed: int) -> dict:
  """Independent NumPy values (the oracle) for a params/opt_state pytree."""
  r = np.random.default_rng(seed)
  return {
      "conv": {"kernel": r.standard_normal((3, 3, 2, 4)).astype(np.float32),
               "bias": r.standard_normal((4,)).astype(np.float32)},
      "dense": {"kernel": r.standard_normal((4, 5)).astype(np.float32)},
  }


def _train_state(mesh, seed: int, step: int) -> dict:
  """Params, a real optax Adam state (named tuples, int32 count), steps."""
  params = jax.device_put(jax.tree.map(jnp.asarray, _numpy_state(seed)),
                          replicated(mesh))
  opt_state = optax.adam(1e-3).init(params)
  # Make mu/nu differ from zeros so that a restore of zeros can't pass.
  opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else
                           x + seed, opt_state)
  return {"params": params, "opt_state": opt_state,
          "step": jax.device_put(jnp.int32(step), replicated(mesh)),
          "epoch": step // 10,                       # Python int
          "host_counts": np.arange(3, dtype=np.int64) + step}


def _assert_trees_equal(actual, expected):
  assert (jax.tree_util.tree_structure(actual)
          == jax.tree_util.tree_structure(expected))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    assert np.asarray(a).dtype == np.asarray(e).dtype


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8
  return make_mesh()


def test_roundtrip_exact_with_mesh_shardings(tmp_path, mesh):
  state = _train_state(mesh, seed=1, step=30)
  extra = {"data_step": 30, "rng": rng_to_list(jax.random.key(7)),
           "epoch": 3}
  with Checkpointer(tmp_path, keep=3, save_every_steps=10) as ckpt:
    assert ckpt.maybe_save(30, state, extra)
  template = _train_state(mesh, seed=2, step=0)   # other values, same tree
  with Checkpointer(tmp_path, keep=3, save_every_steps=10) as ckpt:
    restored = ckpt.restore_latest(template)
  assert restored is not None
  step, got, got_extra = restored
  assert step == 30
  assert got_extra == extra
  # Oracle: the NumPy values the state was built from.
  _assert_trees_equal(got["params"], _numpy_state(1))
  _assert_trees_equal(got, state)
  assert isinstance(got["epoch"], int) and got["epoch"] == 3
  assert isinstance(got["host_counts"], np.ndarray)
  for leaf in jax.tree.leaves(got["params"]) + [got["step"]]:
    assert isinstance(leaf, jax.Array)
    assert leaf.sharding.is_equivalent_to(replicated(mesh), leaf.ndim)
    assert len(leaf.addressable_shards) == 8


def test_restore_into_batch_sharded_template(tmp_path, mesh):
  from hcl_jax.distributed.mesh import batch_sharding  # pylint: disable=g-import-not-at-top
  table = np.arange(64, dtype=np.float32).reshape(16, 4)
  state = {"table": jax.device_put(table, replicated(mesh))}
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, state)
  template = {"table": jax.ShapeDtypeStruct((16, 4), jnp.float32,
                                            sharding=batch_sharding(mesh))}
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    _, got, _ = ckpt.restore_latest(template)
  np.testing.assert_array_equal(np.asarray(got["table"]), table)
  assert got["table"].sharding == batch_sharding(mesh)
  assert got["table"].addressable_shards[0].data.shape == (2, 4)


def test_save_schedule_and_keep_last_k(tmp_path):
  state = {"w": jnp.zeros(3)}
  with Checkpointer(tmp_path, keep=2, save_every_steps=3) as ckpt:
    saved = [s for s in range(1, 11)
             if ckpt.maybe_save(s, {"w": jnp.full(3, float(s))})]
    assert saved == [3, 6, 9]
    ckpt.wait()
    assert ckpt.all_steps() == [6, 9]
    assert ckpt.maybe_save(10, state, force=True)
    assert not ckpt.maybe_save(10, state, force=True)  # never rewritten
    assert not ckpt.maybe_save(9, state, force=True)
  assert sorted(os.listdir(tmp_path)) == ["10", "9"]
  with Checkpointer(tmp_path, keep=2, save_every_steps=3) as ckpt:
    assert ckpt.latest_step() == 10
    # Resuming at the latest step must not try to save it again.
    assert not ckpt.maybe_save(10, state, force=True)


def _truncate_data_files(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                    recursive=True)
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _flip_data_bytes(step_dir):
  for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                     recursive=True):
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 2, len(data)):
      data[i] ^= 0xFF
    open(f, "wb").write(bytes(data))


def _delete_state_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def _truncate_extra_json(step_dir):
  with open(os.path.join(step_dir, "extra", "metadata"), "r+b") as fh:
    fh.truncate(3)


@pytest.mark.parametrize("corrupt", [_truncate_data_files, _flip_data_bytes,
                                     _delete_state_item,
                                     _truncate_extra_json])
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog, corrupt):
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    for s in (1, 2, 3):
      ckpt.maybe_save(s, {"w": jnp.arange(100.0) * s}, {"data_step": 10 * s})
  corrupt(str(tmp_path / "3"))
  with caplog.at_level(logging.WARNING, logger="hcl_jax.run.checkpointing"):
    with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
      step, got, extra = ckpt.restore_latest({"w": jnp.zeros(100)})
      assert step == 2 and extra == {"data_step": 20}
      np.testing.assert_array_equal(np.asarray(got["w"]),
                                    np.arange(100.0) * 2)
      assert ckpt.all_steps() == [1, 2]
      # The run redoes step 3 and must be able to save it again.
      assert ckpt.maybe_save(3, {"w": jnp.ones(100)}, force=True)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert any("step 3" in m and "unreadable" in m for m in warnings), warnings
  assert glob.glob(str(tmp_path / "3.unreadable-*"))  # kept for inspection


def test_all_unreadable_returns_none_with_warning(tmp_path, caplog):
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, {"w": jnp.arange(100.0)})
  _truncate_data_files(str(tmp_path / "1"))
  with caplog.at_level(logging.WARNING, logger="hcl_jax.run.checkpointing"):
    with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
      assert ckpt.restore_latest({"w": jnp.zeros(100)}) is None
      assert ckpt.all_steps() == []
  assert any("No readable checkpoint" in r.getMessage()
             for r in caplog.records)


def test_empty_directory_restores_none(tmp_path):
  with Checkpointer(tmp_path / "new", keep=1, save_every_steps=1) as ckpt:
    assert ckpt.restore_latest({"w": jnp.zeros(2)}) is None


def test_half_written_tmp_dir_is_ignored_and_cleaned(tmp_path):
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, {"w": jnp.arange(5.0)}, {"data_step": 1})
  # What a kill in the middle of saving step 2 leaves behind: orbax's
  # temporary directory, with partly written files.
  tmp_dir = tmp_path / "2.orbax-checkpoint-tmp-1732870000123"
  shutil.copytree(tmp_path / "1", tmp_dir)
  _truncate_data_files(str(tmp_dir))
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    assert ckpt.all_steps() == [1]
    step, got, _ = ckpt.restore_latest({"w": jnp.zeros(5)})
    assert step == 1
    np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(5.0))
    assert ckpt.maybe_save(2, {"w": jnp.ones(5)})
  assert not tmp_dir.exists()
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_async_save_tolerates_donated_arrays(tmp_path):
  """maybe_save returns after the copy to host: deleting (as donation does)
  the arrays right after it must not corrupt the checkpoint."""
  w = jnp.arange(1000.0)
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, {"w": w})
    w.delete()
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    _, got, _ = ckpt.restore_latest({"w": jnp.zeros(1000)})
  np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(1000.0))


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="keep"):
    Checkpointer(tmp_path, keep=0, save_every_steps=1)
  with pytest.raises(ValueError, match="save_every_steps"):
    Checkpointer(tmp_path, keep=1, save_every_steps=0)
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    with pytest.raises(ValueError, match="JSON"):
      ckpt.maybe_save(1, {"w": jnp.zeros(2)}, {"rng": np.zeros(2)})
    with pytest.raises(ValueError, match="step"):
      ckpt.maybe_save(-1, {"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="without a sharding"):
      ckpt.restore_latest({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_rng_list_roundtrip():
  key = jax.random.key(42)
  data = rng_to_list(key)
  assert json.loads(json.dumps(data)) == data
  back = rng_from_list(data)
  np.testing.assert_array_equal(jax.random.key_data(back),
                                jax.random.key_data(key))
  np.testing.assert_array_equal(jax.random.uniform(back, (3,)),
                                jax.random.uniform(key, (3,)))
  raw = jax.random.PRNGKey(42)
  np.testing.assert_array_equal(rng_from_list(rng_to_list(raw), typed=False),
                                raw)


def test_preemption_guard_sets_flag_and_restores_handler():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    assert not guard.should_stop and not guard.should_stop_at(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # the handler runs at the next bytecode boundary
    assert guard.should_stop and guard.should_stop_at(2)
    assert guard.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before


def _run_loop(workdir, total, *extra_args):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "tests", "fake_train_loop.py"),
       str(workdir), "--total-steps", str(total), *extra_args],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.xdist_group("subprocess")
def test_sigterm_saves_exits_zero_and_resume_matches_straight_run(tmp_path):
  total = 120
  straight = _run_loop(tmp_path / "straight", total)
  preempted_dir = tmp_path / "preempted"
  ready = tmp_path / "ready"
  proc = _run_loop(preempted_dir, total, "--ready-file", str(ready),
                   "--step-sleep", "0.05")
  deadline = time.time() + 60
  while not ready.exists():
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, "fake loop never became ready"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out
  result = json.loads((preempted_dir / "result.json").read_text())
  assert result["stopped"] and result["last_step"] < total, result
  stopped_at = result["last_step"]
  # The preemption checkpoint is there and readable.
  with Checkpointer(preempted_dir / "checkpoints", keep=2,
                    save_every_steps=50) as ckpt:
    assert ckpt.latest_step() == stopped_at
  # Restart: resumes from the preemption checkpoint and runs to the end.
  resumed = _run_loop(preempted_dir, total)
  out, _ = resumed.communicate(timeout=120)
  assert resumed.returncode == 0, out
  result = json.loads((preempted_dir / "result.json").read_text())
  assert result == {"last_step": total, "stopped": False,
                    "start_step": stopped_at}
  out, _ = straight.communicate(timeout=120)
  assert straight.returncode == 0, out
  a = np.load(tmp_path / "straight" / "final.npz")
  b = np.load(preempted_dir / "final.npz")
  assert int(a["count"]) == total
  for name in ("w", "b", "mu", "count"):
    np.testing.assert_array_equal(a[name], b[name])
  # Straight run: saves at 50, 100 and the final 120, keeps the last 2.
  assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == [
      "100", "120"]


def _largest_data_file(step_dir) -> str:
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _flip_one_byte(path: str) -> None:
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))


def test_one_flipped_byte_in_array_data_falls_back_to_previous_step(tmp_path, caplog):
  """TensorStore decodes a checkpoint with one flipped byte of compressed
  array data into changed weights without an error (checked below with plain
  orbax); the saved CRC-32 catches it."""
  import orbax.checkpoint as ocp

  values = {s: np.random.default_rng(s).standard_normal(1000).astype(np.float32)
            for s in (1, 2, 3)}
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    for s in (1, 2, 3):
      ckpt.maybe_save(s, {"w": jnp.asarray(values[s])}, {"data_step": s})
  _flip_one_byte(_largest_data_file(str(tmp_path / "3")))
  target = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32,
                                      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
  silently = ocp.StandardCheckpointer().restore(tmp_path / "3" / "state", target)
  assert (np.asarray(silently["w"]) != values[3]).any()  # the damage orbax does not see
  with caplog.at_level(logging.WARNING, logger="hcl_jax.run.checkpointing"):
    with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
      step, got, extra = ckpt.restore_latest({"w": jnp.zeros(1000)})
  assert step == 2 and extra == {"data_step": 2}
  np.testing.assert_array_equal(np.asarray(got["w"]), values[2])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 3" in m and "CRC-32 mismatch" in m for m in warnings), warnings
  assert any("step 2" in m and "[3]" in m for m in warnings), warnings  # both step numbers
  assert glob.glob(str(tmp_path / "3.unreadable-*"))


def _adam_state(shapes: dict) -> dict:
  params = {k: jnp.ones(v) for k, v in shapes.items()}
  return {"params": params, "opt_state": optax.adam(1e-3).init(params)}


@pytest.mark.parametrize("saved, wanted, named", [
    ({"proj": (4, 8)}, {"proj": (4, 16)}, r"proj has shape \(4, 8\) saved, \(4, 16\)"),  # grown
    ({"proj": (4, 16)}, {"proj": (4, 8)}, r"shape \(4, 16\) saved, \(4, 8\)"),           # shrunk
    ({"proj": (4, 8)}, {"proj": (4, 8), "extra": (3,)}, r"0 saved arrays not in"),      # added
    ({"proj": (4, 8), "extra": (3,)}, {"proj": (4, 8)}, r"not in this config's state"),  # removed
])
def test_any_shape_or_tree_change_is_a_different_model_and_renames_nothing(
    tmp_path, saved, wanted, named):
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    for s in (1, 2):
      ckpt.maybe_save(s, _adam_state(saved))
  before = sorted(os.listdir(tmp_path))
  from hcl_jax.run.checkpointing import IncompatibleCheckpoint
  with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
    with pytest.raises(IncompatibleCheckpoint, match="checkpoint 2 .* different model") as err:
      ckpt.restore_latest(_adam_state(wanted))
  assert len(str(err.value).splitlines()) == 1
  import re
  assert re.search(named, str(err.value)), str(err.value)
  assert sorted(os.listdir(tmp_path)) == before == ["1", "2"]


def test_dtype_change_is_a_different_model(tmp_path):
  from hcl_jax.run.checkpointing import IncompatibleCheckpoint
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, {"w": jnp.zeros(3, jnp.float32)})
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    with pytest.raises(IncompatibleCheckpoint, match="dtype float32 saved, int32"):
      ckpt.restore_latest({"w": jnp.zeros(3, jnp.int32)})
  assert os.listdir(tmp_path) == ["1"]


def test_agreed_verdict_takes_the_worst_of_every_process():
  from hcl_jax.run.checkpoint_integrity import OTHER_MODEL, READABLE, UNREADABLE, agreed_verdict
  assert agreed_verdict([READABLE, READABLE]) == READABLE
  # One host's damaged read makes every host skip the step...
  assert agreed_verdict([READABLE, UNREADABLE, READABLE]) == UNREADABLE
  # ...and a host that sees another model makes every host refuse.
  assert agreed_verdict([UNREADABLE, OTHER_MODEL]) == OTHER_MODEL
  assert agreed_verdict(np.asarray([[0], [1]], np.int32)) == UNREADABLE  # process_allgather's shape


def test_checksums_are_crc32_of_each_arrays_bytes(tmp_path):
  import zlib
  from hcl_jax.run.checkpoint_integrity import CHECKSUM_KEY
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, {"w": jnp.asarray(w), "n": np.arange(3), "k": 4}, {"a": 1})
  saved = json.loads((tmp_path / "1" / "extra" / "metadata").read_text())
  assert saved[CHECKSUM_KEY] == {"['w']": zlib.crc32(w.tobytes()),
                                 "['n']": zlib.crc32(np.arange(3).tobytes())}
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    assert ckpt.newest_extra() == (1, {"a": 1})


def test_a_failed_restores_leftover_tracebacks_are_dropped_others_kept():
  # Under load a damaged checkpoint's restore left unawaited reads that
  # printed "Exception ignored in: <coroutine object
  # _read_array_index_and_device_put>" with a whole TensorStore spec
  # (test_graph_lifecycle's corrupt-checkpoint test, one CI run in three).
  program = (
      "from hcl_jax.run.orbax_logs import quiet_closed_loop_errors\n"
      "class Leftover:\n"
      "  def __init__(self, exc): self.exc = exc\n"
      "  def __del__(self): raise self.exc\n"
      "with quiet_closed_loop_errors(): pass\n"
      "Leftover(Exception('Encountered error while reading array index: (slice(0, 48, 1),).'))\n"
      "Leftover(RuntimeError('Event loop is closed'))\n"
      "Leftover(ValueError('a real one'))\n")
  proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
  assert proc.returncode == 0, proc.stderr
  assert "reading array index" not in proc.stderr
  assert "Event loop is closed" not in proc.stderr
  assert proc.stderr.count("Exception ignored") == 1 and "ValueError: a real one" in proc.stderr
