"""The run's guards, unit by unit: workdir lock, run identity, attempts,
one-line OS errors, and the train step's non-finite guard with its monitor.

End-to-end behaviour (a diverging run, a refused resume, signals, evaluate)
is in test_run_safety.py.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import get_config
from hcl_jax.train import divergence
from hcl_jax.distributed import mesh as mesh_lib
from hcl_jax import models
from hcl_jax.train import optim
from hcl_jax.run import guard as run_guard
from hcl_jax.run import errors as run_errors
from hcl_jax.run import files
from hcl_jax.run import identity as identity_lib
from hcl_jax.train import step as ts


# ------------------------------------------------------------------------ lock


def _write_lock(workdir, **record):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
            "started": "2026-01-02T03:04:05+00:00", **record}
  (workdir / files.LOCK_FILE).write_text(json.dumps(record))
  return record


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_exclusive_and_released(tmp_path):
  with run_guard.WorkdirLock(tmp_path) as lock:
    held = json.loads((tmp_path / files.LOCK_FILE).read_text())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(run_guard.WorkdirLocked) as err:
      run_guard.WorkdirLock(tmp_path).acquire()
    message = str(err.value)
    assert f"pid {os.getpid()}" in message and held["started"] in message
    assert repr(socket.gethostname()) in message and "\n" not in message
    assert lock.took_over is None
  assert not (tmp_path / files.LOCK_FILE).exists()


def test_lock_of_a_live_process_is_not_taken_over(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=sleeper.pid)
    with pytest.raises(run_guard.WorkdirLocked, match=f"pid {sleeper.pid}, started 2026"):
      run_guard.WorkdirLock(tmp_path).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid)
  lock = run_guard.WorkdirLock(tmp_path).acquire()
  assert lock.took_over["pid"] == pid
  assert f"pid {pid}" in lock.stale_message() and "gone" in lock.stale_message()
  assert json.loads((tmp_path / files.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()


def test_reused_pid_counts_as_gone(tmp_path):
  # Our own (live) pid, but the lock predates this process by years: reused.
  _write_lock(tmp_path, pid=os.getpid(), time=1e9)
  assert run_guard.WorkdirLock(tmp_path).acquire().took_over["time"] == 1e9


def test_lock_of_another_host_is_never_broken(tmp_path):
  _write_lock(tmp_path, host="some-other-host", pid=_dead_pid())
  with pytest.raises(run_guard.WorkdirLocked, match="another host .*'some-other-host'.*delete"):
    run_guard.WorkdirLock(tmp_path).acquire()


def test_garbled_lock_is_taken_over(tmp_path):
  (tmp_path / files.LOCK_FILE).write_text('{"host": "vm", "pi')  # killed mid-write
  assert run_guard.WorkdirLock(tmp_path).acquire().took_over == {}


# -------------------------------------------------------------------- identity


def test_identity_covers_the_experiment_not_the_schedule():
  a, b = get_config(), get_config()
  b.num_epochs, b.log_every_steps, b.checkpoint_every_steps = 999, 7, 3
  b.eval.linear_epochs, b.data_dir, b.on_nonfinite = 1, "/elsewhere", "skip"
  assert identity_lib.run_identity(a) == identity_lib.run_identity(b)
  b.batch_size, b.loss.beta, b.model.name = 32, 2.0, "resnet34"
  assert identity_lib.identity_diff(identity_lib.run_identity(a), identity_lib.run_identity(b)) == [
      "batch_size: 256 -> 32", "loss.beta: 1.0 -> 2.0", "model.name: 'resnet18' -> 'resnet34'"]
  for key in ("dataset", "seed", "image_size", "optimizer.learning_rate", "data.shuffle_buffer",
              "augment.flip_prob", "loss.temperature", "mixed_precision"):
    assert key in identity_lib.run_identity(a), key


def test_identity_mismatch_is_one_line_with_the_override():
  stored = identity_lib.run_identity(get_config())
  changed = get_config()
  changed.seed = 3
  with pytest.raises(identity_lib.IdentityMismatch) as err:
    identity_lib.check_identity(stored, identity_lib.run_identity(changed), where="checkpoint 13",
                             allow_change=False)
  assert "seed: 0 -> 3" in str(err.value) and "--allow_config_change" in str(err.value)
  assert "\n" not in str(err.value)
  assert identity_lib.check_identity(stored, identity_lib.run_identity(changed), where="x",
                                  allow_change=True) == ["seed: 0 -> 3"]


def test_identity_from_a_saved_config_json(tmp_path):
  config = get_config()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  assert identity_lib.identity_from_config_json(tmp_path) == identity_lib.run_identity(config)
  assert identity_lib.identity_from_config_json(tmp_path / "nothing") is None


# -------------------------------------------------------------------- attempts


def test_wall_time_sums_every_attempt(tmp_path):
  previous = [{"start": 100.0, "last_seen": 160.0}, {"start": 500.0, "last_seen": 530.5}]
  (tmp_path / files.ATTEMPTS_FILE).write_text(json.dumps(previous))
  attempts = run_guard.Attempts(tmp_path)
  assert attempts.count == 3
  assert attempts.wall_time_s(now=attempts.start + 9.5) == pytest.approx(60 + 30.5 + 9.5)
  saved = json.loads((tmp_path / files.ATTEMPTS_FILE).read_text())
  assert saved[:2] == previous and saved[2]["pid"] == os.getpid()


# ------------------------------------------------------------------ OS errors


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(run_errors.RunError, match="file: exists and is not a directory"):
    with run_guard.hold_workdir(tmp_path / "file", is_main=True):
      pass
  with pytest.raises(NotADirectoryError) as err:
    with run_guard.hold_workdir(tmp_path / "file" / "sub", is_main=True):
      pass
  assert run_errors.os_error_line(err.value) == f"{tmp_path / 'file' / 'sub'}: Not a directory"


def test_os_error_found_in_a_wrapped_exception_is_one_line(tmp_path, capsys):
  def fail():
    try:
      raise OSError(28, "No space left on device", str(tmp_path / "ckpt"))
    except OSError as e:
      raise RuntimeError("async save failed") from e

  with pytest.raises(SystemExit) as exit_info:
    with run_errors.one_line_errors(tmp_path):
      fail()
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == f"error: {tmp_path / 'ckpt'}: No space left on device\n"


# ------------------------------------------------- the step's non-finite guard


def _tiny_step(learning_rate):
  config = get_config()
  config.batch_size, config.num_epochs = 8, 1
  config.optimizer.learning_rate = learning_rate
  config.model.projection_hidden_dim, config.model.projection_dim = 16, 8
  model = models.ContrastiveModel(
      encoder=models.ResNet(stage_sizes=(1,), block_cls=models.BasicBlock, base_width=4),
      head=models.ProjectionHead(hidden_dim=16, out_dim=8))
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  state = ts.create_train_state(model, optim.make_optimizer(config, 1), jax.random.key(0), mesh,
                                (8, 8, 3))
  return ts.make_train_step(config, mesh, 1, model), jax.device_get(state), mesh


def test_nonfinite_step_keeps_the_state_and_says_what():
  step, host_state, mesh = _tiny_step(1e38)
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.normal(size=(8, 8, 8, 3)), jnp.float32) for k in ("view1", "view2")}
  monitor = divergence.DivergenceMonitor("skip", start_step=10)
  state = jax.device_put(host_state, mesh_lib.replicated(mesh))
  codes, before = [], []
  for _ in range(4):
    before.append(jax.device_get(state))
    state, metrics = step(state, batch)
    monitor.update(metrics)
    codes.append(int(metrics["nonfinite"]))
  # lr 1e38: step 1 finite but huge, then every step overflows.
  assert codes[0] == 0 and all(c != 0 for c in codes[1:]), codes
  assert codes[1] & divergence.NONFINITE_LOSS
  final = jax.device_get(state)
  assert int(final.step) == 4  # the step count follows the data
  for got, want in zip(jax.tree.leaves(final.params), jax.tree.leaves(before[1].params)):
    np.testing.assert_array_equal(got, want)  # kept from the last good step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves((final.params, final.opt_state)))
  assert monitor.check() == 3 and monitor.first_bad[0] == 12

  stop = divergence.DivergenceMonitor("stop", start_step=10)
  stop.update({"nonfinite": jnp.float32(0)})
  assert stop.check() == 0
  stop.update({"nonfinite": jnp.float32(divergence.NONFINITE_LOSS + divergence.NONFINITE_GRAD_NORM)})
  with pytest.raises(divergence.Diverged,
                     match="diverged at step 12: non-finite loss and gradient norm"):
    stop.check()


# ------------------------------------------------ checkpoints: never destroy


def _three_checkpoints(directory):
  from hcl_jax.run.checkpointing import Checkpointer
  with Checkpointer(directory, keep=3, save_every_steps=1) as ckpt:
    for s in (1, 2, 3):
      ckpt.maybe_save(s, {"w": jnp.arange(100.0) * s}, {"data_step": s})


def _listing(directory):
  return sorted(os.listdir(directory))


def test_intact_checkpoint_of_another_shape_is_refused_not_renamed(tmp_path):
  from hcl_jax.run.checkpointing import Checkpointer, IncompatibleCheckpoint
  _three_checkpoints(tmp_path)
  before = _listing(tmp_path)
  for template in ({"w": jnp.zeros(50)}, {"v": jnp.zeros(100)}):
    with Checkpointer(tmp_path, keep=3, save_every_steps=1) as ckpt:
      with pytest.raises(IncompatibleCheckpoint, match="checkpoint 3 .* intact"):
        ckpt.restore_latest(template)
    assert _listing(tmp_path) == before


def test_read_only_checkpointer_skips_corrupt_without_touching_anything(tmp_path):
  from hcl_jax.run.checkpointing import Checkpointer
  _three_checkpoints(tmp_path)
  for name in glob.glob(str(tmp_path / "3" / "state" / "**" / "d" / "*"), recursive=True):
    with open(name, "r+b") as f:
      f.truncate(os.path.getsize(name) // 2)
  (tmp_path / "4.orbax-checkpoint-tmp-1234").mkdir()  # a save in progress elsewhere
  before = _listing(tmp_path)
  with Checkpointer(tmp_path, keep=3, save_every_steps=1, read_only=True) as ckpt:
    step, got, extra = ckpt.restore_latest({"w": jnp.zeros(100)})
    assert (step, extra) == (2, {"data_step": 2})
    np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(100.0) * 2)
    with pytest.raises(ValueError, match="read_only"):
      ckpt.maybe_save(5, {"w": jnp.zeros(100)}, force=True)
  assert _listing(tmp_path) == before


# ------------------------------------------------------------------- exit


def test_exit_now_flushes_and_skips_the_teardown(tmp_path):
  """The command-line exit runs no interpreter teardown (where TF, TensorStore
  and XLA threads crashed 1 run in 5 with rc 134), yet loses no output.

  The statistical check (N complete runs, every rc 0) is in
  benchmarks/fault_sweep.py: too slow for the suite.
  """
  program = (
      "import atexit, os, sys\n"
      "from hcl_jax.run import errors as run_errors\n"
      "atexit.register(lambda: os.write(1, b'TEARDOWN'))\n"
      "class Crash:\n"
      "  def __del__(self):\n"
      "    os.write(1, b'DESTRUCTOR')\n"
      "keep = Crash()\n"
      "print('buffered line', end='')\n"
      "sys.stderr.write('buffered err')\n"
      "run_errors.exit_now(7)\n")
  proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
  assert proc.returncode == 7
  assert proc.stdout == "buffered line" and proc.stderr.endswith("buffered err")


def test_tensorstore_disk_full_error_is_one_line(capsys):
  message = ('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/6.orbax-checkpoint-tmp/'
             'state/_sharding": Failed writing: "/w/x.__lock": Failed to write 46104 bytes to '
             "file 12: No space left on device [os_error_code='28']")
  with pytest.raises(SystemExit):
    with run_errors.one_line_errors("/w"):
      raise ValueError(message)
  assert capsys.readouterr().err == (
      "error: /w/checkpoints/6.orbax-checkpoint-tmp/state/_sharding: No space left on device\n")


def test_shape_change_is_refused_on_eight_devices_not_confused_with_chunks(tmp_path):
  """A replicated array is written in per-device chunks: their shape is no
  mismatch (the intact checkpoint restores), another rank is."""
  from hcl_jax.run.checkpointing import Checkpointer, IncompatibleCheckpoint
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  state = jax.device_put({"w": jnp.ones((3, 3, 4, 8))}, mesh_lib.replicated(mesh))
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    ckpt.maybe_save(1, state)
  with Checkpointer(tmp_path, keep=1, save_every_steps=1) as ckpt:
    assert ckpt.restore_latest(state).step == 1
    with pytest.raises(IncompatibleCheckpoint):
      ckpt.restore_latest({"w": jnp.ones((3, 3, 4))})
  assert sorted(os.listdir(tmp_path)) == ["1"]


def test_orbax_records_of_an_os_error_are_dropped_others_kept(tmp_path):
  # A full disk made orbax log the error with a traceback from each of its
  # threads (~200-300 lines) before the run's one line; measured on a 1.5 MB
  # tmpfs (benchmarks/fault_sweep.py): 4 tracebacks before, 0 after.
  import logging

  from hcl_jax.run import checkpointing
  from hcl_jax.run import orbax_logs

  checkpointing.Checkpointer(tmp_path / "ckpt", keep=1, save_every_steps=1).close()
  absl_filters = [f for f in logging.getLogger("absl").filters
                  if isinstance(f, orbax_logs.OsErrorRecords)]
  assert len(absl_filters) == 1
  keep = absl_filters[0].filter

  def record(path, level=logging.ERROR, msg="failed", exc=None):
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("absl", level, path, 1, msg, (), exc_info)

  orbax = "/venv/site-packages/orbax/checkpoint/_src/futures/future.py"
  full = OSError(28, "No space left on device")
  wrapped = ValueError("commit failed")
  wrapped.__cause__ = full
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/x": '
                           "[os_error_code='28']")
  assert not keep(record(orbax, exc=full))
  assert not keep(record(orbax, exc=wrapped))
  assert not keep(record(orbax, exc=tensorstore))
  assert not keep(record(orbax, msg="raised an exception: [Errno 28] No space left on device"))
  assert keep(record(orbax, exc=ValueError("shape mismatch")))          # not an OS error
  assert keep(record(orbax, level=logging.WARNING, exc=full))           # not an error record
  assert keep(record("/venv/site-packages/jax/_src/x.py", exc=full))    # not orbax's
