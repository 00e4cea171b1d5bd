"""Graph runs live as image runs do (issue 26): `python -m hcl_jax.graph.main`
on MUTAG, tiny (hidden_dim 16, 12 epochs of 2 steps), through
``hcl_jax.run.lifecycle``: SIGTERM saves, exits 75 and the rerun ends as a
straight run; kill -9 loses no metric line a checkpoint covers; a changed
beta and a live workdir are refused in one line; a corrupt checkpoint is
one warning, not pages of noise.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import support

pytestmark = pytest.mark.xdist_group("subprocess")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EPOCHS = 12
_STEPS_PER_EPOCH = 2  # MUTAG's 188 graphs in batches of 128
_TIMEOUT_S = 300
_TINY = {"num_epochs": _EPOCHS, "hidden_dim": 16, "eval_every_epochs": 4, "svc_folds": 3,
         "svc_inner_folds": 2, "checkpoint_every_epochs": 2, "keep_checkpoints": 3,
         "tensorboard": False, "progress": "none", "loss.beta": 2.0}
# `python -m hcl_jax.graph.main` with every train step STEP_SLEEP seconds
# longer (the numbers unchanged), so that a signal lands mid-training.
_SLOW_LAUNCHER = (
    "import os, runpy, time\n"
    "from hcl_jax.graph import train\n"
    "real, pause = train.make_train_step, float(os.environ['STEP_SLEEP'])\n"
    "def slowed(*args):\n"
    "  step = real(*args)\n"
    "  def wrapped(*a):\n"
    "    time.sleep(pause)\n"
    "    return step(*a)\n"
    "  return wrapped\n"
    "train.make_train_step = slowed\n"
    "runpy.run_module('hcl_jax.graph.main', run_name='__main__', alter_sys=True)\n")


def _args(workdir, **overrides):
  values = {**_TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return (["--config", "configs/graph.py:dataset=MUTAG", "--workdir", str(workdir)]
          + [f"--config.{k}={v}" for k, v in values.items()])



def _cli(workdir, *extra, **overrides):
  """A whole `python -m hcl_jax.graph.main` run: (rc, stdout, stderr)."""
  proc = subprocess.run([sys.executable, "-m", "hcl_jax.graph.main", *_args(workdir, **overrides),
                         *extra], cwd=_ROOT, env=support.single_process_env(), capture_output=True, text=True,
                        timeout=_TIMEOUT_S)
  return proc.returncode, proc.stdout, proc.stderr


def _start_slow(workdir, step_sleep, **overrides):
  return subprocess.Popen([sys.executable, "-c", _SLOW_LAUNCHER, *_args(workdir, **overrides)],
                          cwd=_ROOT, env=support.single_process_env(STEP_SLEEP=str(step_sleep)),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, condition, what, timeout=_TIMEOUT_S):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    if proc.poll() is not None:
      pytest.fail(f"run exited ({proc.returncode}) before {what}:\n{proc.communicate()[0][-3000:]}")
    time.sleep(0.05)
  support.collect_processes([proc], timeout_s=1)  # fails with its stack and output


def _metrics(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _steps_on_disk(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _snapshot(workdir, skip=("logs",)):
  """Every file under workdir (but this process's log) with its content hash."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
    rel = os.path.relpath(path, workdir)
    if os.path.isfile(path) and rel.split(os.sep)[0] not in skip:
      with open(path, "rb") as f:
        out[rel] = hashlib.sha256(f.read()).hexdigest()
  return out


def _assert_same_run(workdir, straight):
  """The final metrics of ``workdir`` are the straight run's (``straight``:
  (results, metrics)): the SVC accuracies, and one loss per epoch."""
  results, metrics = _results(workdir), _metrics(workdir)
  for key in ("svc_accuracy", "svc_accuracy_epoch0", "svc_accuracy_by_epoch", "steps"):
    assert results[key] == straight[0][key], key
  assert [m["epoch"] for m in metrics] == list(range(1, _EPOCHS + 1))
  assert [m["step"] for m in metrics] == [m["step"] for m in straight[1]]
  for got, want in zip(metrics, straight[1]):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["epoch"]
    assert got.get("svc_accuracy") == want.get("svc_accuracy"), got["epoch"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """A run that went straight through: (workdir, results, metrics)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  rc, out, err = _cli(workdir)
  assert rc == 0, (out + err)[-3000:]
  results = _results(workdir)
  assert set(results["svc_accuracy_by_epoch"]) == {"0", "4", "8", "12"}
  assert results["attempts"] == 1
  return str(workdir), results, _metrics(workdir)


def _sigterm(proc) -> str:
  """SIGTERM to ``proc``, bounded (its stacks on timeout); asserts exit 75; its output."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
  try:
    output = support.collect_processes([proc], timeout_s=_TIMEOUT_S)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 75, output[-3000:]
  return output


def test_sigterm_saves_exits_75_and_the_rerun_ends_as_a_straight_run(straight, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start_slow(workdir, 0.4)
  _wait_for(proc, lambda: len(_metrics(workdir)) >= 2, "two epochs' metrics")
  output = _sigterm(proc)
  assert "Traceback" not in output
  stop = _steps_on_disk(workdir)[-1]
  assert f"SIGTERM received: checkpoint {stop} saved, exiting." in output, output[-3000:]
  assert stop < _EPOCHS * _STEPS_PER_EPOCH
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  # Every epoch the stop's checkpoint covers has its line (flushed with it).
  assert [m["epoch"] for m in _metrics(workdir)] == list(range(1, stop // _STEPS_PER_EPOCH + 1))
  assert not os.path.exists(os.path.join(workdir, "run.lock"))

  # The rerun resumes and ends as the straight run.
  rc, out, err = _cli(workdir)
  assert rc == 0, (out + err)[-3000:]
  assert f"Resuming from checkpoint {stop} in {workdir}." in out
  _assert_same_run(workdir, straight[1:])
  assert _results(workdir)["attempts"] == 2

  # Rerun with another beta: refused in one line, nothing touched but the process log.
  before = _snapshot(workdir)
  rc, out, err = _cli(workdir, loss__beta=1.0)
  assert rc == 1, (out + err)[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"error: checkpoint {_EPOCHS * _STEPS_PER_EPOCH} in {workdir} was "
                         "trained with a different config (loss.beta: 2.0 -> 1.0)"), err[-3000:]
  assert "--allow_config_change" in last and "Traceback" not in err
  assert _snapshot(workdir) == before
  # Rerun as it was: the finished run's results, written once.
  rc, out, err = _cli(workdir)
  assert rc == 0, (out + err)[-3000:]
  assert _snapshot(workdir) == before


def test_second_run_on_a_live_workdir_refuses(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start_slow(workdir, 0.2, num_epochs=1000)
  try:
    _wait_for(proc, lambda: _metrics(workdir), "training")
    rc, out, err = _cli(workdir)
    assert rc == 1, (out + err)[-3000:]
    assert err.strip().splitlines()[-1].startswith(
        f"error: {os.path.join(workdir, 'run.lock')} is held by a running job "
        f"(host {os.uname().nodename!r}, pid {proc.pid}"), err[-3000:]
    assert "Traceback" not in err
    assert proc.poll() is None, "the first run must still be training"
  finally:
    _sigterm(proc)  # the first run: still 75


def test_kill_9_loses_no_metric_line_a_checkpoint_covers(straight, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start_slow(workdir, 0.4, checkpoint_every_epochs=1)
  try:
    _wait_for(proc, lambda: len(_steps_on_disk(workdir)) >= 2, "two checkpoints")
    proc.kill()  # SIGKILL: nothing runs after it
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  newest = _steps_on_disk(workdir)[-1]
  epochs = [m["epoch"] for m in _metrics(workdir)]
  covered = newest // _STEPS_PER_EPOCH
  assert epochs[:covered] == list(range(1, covered + 1)), (newest, epochs)
  # The rerun drops the lines past its checkpoint and ends as a straight run.
  rc, out, err = _cli(workdir, checkpoint_every_epochs=1)
  assert rc == 0, (out + err)[-3000:]
  _assert_same_run(workdir, straight[1:])


def test_corrupt_checkpoint_is_one_warning_and_the_previous_is_used(straight, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(straight[0], workdir)
  os.remove(os.path.join(workdir, "results.json"))
  newest = _steps_on_disk(workdir)[-1]
  # Flip bytes of the newest checkpoint's array data (its metadata still reads).
  files = glob.glob(os.path.join(workdir, "checkpoints", str(newest), "state", "ocdbt.*", "d",
                                 "*"))
  assert files
  for name in files:
    with open(name, "rb") as f:
      data = bytearray(f.read())
    data[::97] = bytes(b ^ 0x5A for b in data[::97])
    with open(name, "wb") as f:
      f.write(bytes(data))
  rc, out, err = _cli(workdir)
  assert rc == 0, (out + err)[-3000:]
  lines = err.strip().splitlines()
  assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
  assert len(lines) <= 5, err[-3000:]  # unreadable, renamed, resuming from the previous
  assert sum(f"Checkpoint step {newest} " in line and "unreadable" in line
             for line in lines) == 1, err[-3000:]
  assert glob.glob(os.path.join(workdir, "checkpoints", f"{newest}.unreadable-*"))
  _assert_same_run(workdir, straight[1:])
