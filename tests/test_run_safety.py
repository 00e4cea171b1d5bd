"""A run that never lies and never destroys (issue 15), end to end on digits.

Tiny runs as in test_main.py (ResNet-18 at 1/16 width, 8px, batch 64, 22
steps an epoch) with the evaluation stubbed out: divergence (stop and skip),
a refused resume with a changed config that leaves every file as it was,
the workdir lock, wall time over attempts, SIGINT / SIGTERM in every phase,
and ``evaluate`` leaving the training run's checkpoints and results alone.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import support  # noqa: E402
from support import data_dir, fake_eval  # noqa: E402,F401  (fixtures)
from hcl_jax.train import divergence  # noqa: E402
from hcl_jax.evaluation import protocol as evaluate  # noqa: E402
from hcl_jax import evaluate as evaluate_cli  # noqa: E402
from hcl_jax.run import lifecycle  # noqa: E402
from hcl_jax import main as main_lib  # noqa: E402
from hcl_jax.run import guard as run_guard  # noqa: E402
from hcl_jax.run import errors as run_errors
from hcl_jax.run import files
from hcl_jax.run import identity as identity_lib
from hcl_jax.run.checkpointing import IncompatibleCheckpoint  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BATCH = 64
_STEPS = 1437 // _BATCH  # one epoch: 22 steps
_FAKE_EVAL = support.FAKE_EVAL
_TINY = {
    "image_size": support.DIGITS_TEST_SIDE, "batch_size": _BATCH, "num_epochs": 1, "model.name": "resnet18",
    "model.width_multiplier": 0.0625, "model.projection_hidden_dim": 16,
    "model.projection_dim": 8, "eval.linear_epochs": 1, "eval.knn_k": 10,
    "log_every_steps": 1, "checkpoint_every_steps": 5, "keep_checkpoints": 3,
}
# hcl_jax.main's absl app; the evaluation replaced by a stub that takes
# EVAL_SLEEP seconds (so that a signal can land inside it).
_LAUNCHER = (
    "import os, time\n"
    "from absl import app\n"
    "from hcl_jax.evaluation import protocol as evaluate\n"
    "def fake(*a, **k):\n"
    "  time.sleep(float(os.environ.get('EVAL_SLEEP', '0')))\n"
    f"  return dict({_FAKE_EVAL!r})\n"
    "evaluate.evaluate_encoder = fake\n"
    "from hcl_jax import main\n"
    "app.run(main.main)\n")


def _config(data_dir, **overrides):
  config = support.digits_config()
  config.data_dir = data_dir
  for key, value in {**_TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _cli_args(data_dir, workdir, **overrides):
  values = {**_TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return (["--config", os.path.join(_ROOT, "configs", "digits.py"), "--workdir", workdir,
           f"--config.data_dir={data_dir}"] + [f"--config.{k}={v}" for k, v in values.items()])



def _launch(args, log_path, **env):
  log = open(log_path, "w")
  proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER] + args, cwd=_ROOT, env=support.single_process_env(**env),
                          stdout=log, stderr=subprocess.STDOUT)
  proc.log_file = log
  return proc


def _wait_for(proc, condition, what, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run exited ({proc.returncode}) before {what}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}")


def _finish(proc, timeout=300):
  try:
    return proc.wait(timeout=timeout)
  finally:
    proc.kill()
    proc.log_file.close()


def _steps_on_disk(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _snapshot(workdir):
  """Every file under workdir with its content hash (what "touched nothing" means)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _checkpoint_leaves_finite(workdir, step):
  """Reads the raw arrays of a checkpoint through orbax's metadata-free restore."""
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
  import jax
  leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
  assert leaves
  return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))




@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
  """A complete one-epoch run (evaluation stubbed): (workdir, results)."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  original = evaluate.evaluate_encoder
  evaluate.evaluate_encoder = lambda *a, **k: dict(_FAKE_EVAL)
  try:
    results = main_lib.train_and_evaluate(_config(data_dir), workdir)
  finally:
    evaluate.evaluate_encoder = original
  assert not os.path.exists(os.path.join(workdir, files.LOCK_FILE))  # released
  return workdir, results


def _copy(finished_run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished_run[0], workdir)
  return workdir


# ------------------------------------------------------------------ divergence


def test_diverging_run_stops_keeps_good_checkpoints_and_writes_no_results(
    data_dir, tmp_path, fake_eval):
  workdir = str(tmp_path / "diverged")
  config = _config(data_dir, optimizer__learning_rate=1e38, checkpoint_every_steps=1,
                   log_every_steps=4)
  with pytest.raises(divergence.Diverged) as err:
    main_lib.train_and_evaluate(config, workdir)
  match = re.search(r"diverged at step (\d+): non-finite (loss|gradient norm|updated)", str(err.value))
  assert match, str(err.value)
  bad_step = int(match.group(1))
  assert 1 <= bad_step < _STEPS
  steps = _steps_on_disk(workdir)
  assert steps and max(steps) < bad_step, (steps, bad_step)  # nothing saved from then on
  assert all(_checkpoint_leaves_finite(workdir, s) for s in steps)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert not os.path.exists(os.path.join(workdir, files.LOCK_FILE))


def test_skip_mode_drops_nonfinite_updates_and_counts_them(data_dir, tmp_path, fake_eval):
  workdir = str(tmp_path / "skipped")
  config = _config(data_dir, optimizer__learning_rate=1e38, on_nonfinite="skip")
  results = main_lib.train_and_evaluate(config, workdir)
  lines = _metrics(workdir)
  assert [m["step"] for m in lines] == list(range(1, _STEPS + 1))
  bad = sum(1 for m in lines if not np.isfinite(m["loss"]) or m["nonfinite"] != 0)
  assert bad > 0 and results["skipped_updates"] == bad
  assert _checkpoint_leaves_finite(workdir, _STEPS)


# ---------------------------------------------------------- changed configs


@pytest.mark.xdist_group("run_safety_finished_run")
@pytest.mark.parametrize("key,value,diff", [
    ("batch_size", 32, "batch_size: 64 -> 32"),
    ("loss.beta", 2.0, "loss.beta: 1.0 -> 2.0"),
    ("model.name", "resnet34", "model.name: 'resnet18' -> 'resnet34'"),
])
def test_changed_config_refuses_and_touches_nothing(finished_run, data_dir, tmp_path, key,
                                                    value, diff, fake_eval):
  workdir = _copy(finished_run, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(identity_lib.IdentityMismatch) as err:
    main_lib.train_and_evaluate(_config(data_dir, **{key.replace(".", "__"): value}), workdir)
  assert diff in str(err.value) and "--allow_config_change" in str(err.value)
  assert f"checkpoint {_STEPS} " in str(err.value)
  assert _snapshot(workdir) == before


@pytest.mark.xdist_group("run_safety_finished_run")
@pytest.mark.parametrize("change,named", [
    ({"model__name": "resnet34"}, r"\d+ saved arrays not in this config's state"),  # added leaves
    # The projection's kernel (16, 8) or bias (8,), whichever is named first.
    ({"model__projection_dim": 16}, r"has shape \((16, )?8,?\) saved, \((16, )?16,?\)"),  # grown
    ({"model__projection_dim": 4}, r"has shape \((16, )?8,?\) saved, \((16, )?4,?\)"),    # shrunk
])
def test_allowed_model_change_on_intact_checkpoints_renames_nothing(finished_run, data_dir,
                                                                    tmp_path, fake_eval,
                                                                    change, named):
  workdir = _copy(finished_run, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(IncompatibleCheckpoint, match=f"checkpoint {_STEPS} .* intact") as err:
    main_lib.train_and_evaluate(_config(data_dir, **change), workdir,
                                allow_config_change=True)
  assert re.search(named, str(err.value)) and "different model" in str(err.value), str(err.value)
  assert _snapshot(workdir) == before
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*unreadable*"))


# ------------------------------------------------------------- lock, attempts


@pytest.mark.xdist_group("run_safety_finished_run")
def test_second_run_refuses_while_the_first_holds_the_workdir(finished_run, data_dir,
                                                              tmp_path, fake_eval):
  workdir = _copy(finished_run, tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (tmp_path / "copy" / files.LOCK_FILE).write_text(json.dumps(
        {"host": os.uname().nodename, "pid": holder.pid, "time": time.time(),
         "started": "2026-12-01T07:00:00+00:00"}))
    before = _snapshot(workdir)
    with pytest.raises(run_guard.WorkdirLocked,
                       match=f"pid {holder.pid}, started 2026-12-01T07:00:00") as err:
      main_lib.train_and_evaluate(_config(data_dir), workdir)
    # What to do about it: wait, or find and stop the holder.
    assert f"`kill {holder.pid}`" in str(err.value) and f"-p {holder.pid}`" in str(err.value)
    assert "Wait for it" in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(workdir) == before
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.xdist_group("run_safety_finished_run")
def test_rerun_sums_wall_time_over_attempts(finished_run, data_dir, tmp_path, fake_eval):
  workdir = _copy(finished_run, tmp_path)
  first = finished_run[1]
  assert first["attempts"] == 1
  results = main_lib.train_and_evaluate(_config(data_dir), workdir)  # nothing left to train
  assert results["attempts"] == 2
  with open(os.path.join(workdir, files.ATTEMPTS_FILE)) as f:
    attempts = json.load(f)
  earlier = attempts[0]["last_seen"] - attempts[0]["start"]
  # The finished attempt counts whole, its evaluation included: the rerun's
  # total is at least the first run's own (which is rounded to 0.1 s).
  assert earlier >= first["wall_time_s"] - 0.05 - 1e-6
  assert results["wall_time_s"] >= first["wall_time_s"]


# ------------------------------------------------------------------- signals


def test_sigint_in_training_saves_and_exits_with_one_line(data_dir, tmp_path):
  workdir = str(tmp_path / "ctrl_c")
  proc = _launch(_cli_args(data_dir, workdir, checkpoint_every_steps=2), tmp_path / "run.log")
  _wait_for(proc, lambda: _steps_on_disk(workdir), "a checkpoint")
  proc.send_signal(signal.SIGINT)
  rc = _finish(proc)
  log = (tmp_path / "run.log").read_text()
  assert rc == 130, log[-3000:]
  match = re.search(r"SIGINT received: checkpoint (\d+) saved, exiting", log)
  assert match and _steps_on_disk(workdir)[-1] == int(match.group(1)), log[-3000:]
  assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_second_sigint_exits_at_once(tmp_path):
  # The guard alone, in a process that stays in its "step" until killed: the
  # second Ctrl-C must end it at once (the first only asks for a save).
  program = (
      "import os, signal, time\n"
      "from hcl_jax.run.preemption import PreemptionGuard\n"
      "with PreemptionGuard(handle_sigint=True) as guard:\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(0.2)\n"
      "  assert guard.should_stop\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(30)\n"
      "print('NOT REACHED')\n")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", program], cwd=_ROOT, env=support.single_process_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 130, proc.stderr[-2000:]
  assert "Second SIGINT: exiting at once" in proc.stderr
  assert "Traceback" not in proc.stderr and "NOT REACHED" not in proc.stdout
  assert time.monotonic() - start < 25


def test_a_signal_swallowed_by_a_gc_callback_is_raised_at_the_next_phase_boundary(tmp_path):
  # A busy CI run: the start-up SIGTERM's handler ran inside JAX's garbage
  # collection callback, Python printed "Exception ignored" and the run
  # trained on to exit 0 (and once that was fixed, the report's traceback
  # was still in the log). Here the signal lands inside a gc callback for sure.
  program = (
      "import gc, os, signal, sys\n"
      "from hcl_jax.run import errors\n"
      "errors.exit_on_signals_outside_training()\n"
      "def callback(phase, info):\n"
      "  if phase == 'start':\n"
      "    gc.callbacks.remove(callback)\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "    for _ in range(1000): pass\n"
      "gc.callbacks.append(callback)\n"
      "gc.collect()\n"
      "print('went on', flush=True)\n"
      "try:\n"
      "  errors.raise_if_interrupted()\n"
      "except errors.Interrupted as e:\n"
      "  print('raised:', e, flush=True)\n"
      "  sys.exit(75)\n"
      "print('NOT REACHED')\n")
  proc = subprocess.run([sys.executable, "-c", program], cwd=_ROOT, env=support.single_process_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == files.EXIT_RETRYABLE, proc.stderr[-2000:]
  assert "went on" in proc.stdout and "NOT REACHED" not in proc.stdout  # the swallow happened
  # ... and Python's "Exception ignored in" report with its traceback is not printed.
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
  assert "raised: SIGTERM received during start-up" in proc.stdout


def test_sigterm_in_startup_and_evaluation_is_retryable_and_rerun_completes(
    finished_run, data_dir, tmp_path, fake_eval):
  # Start-up: the lock exists once the backend is up; the state is not built yet.
  workdir = str(tmp_path / "startup")
  proc = _launch(_cli_args(data_dir, workdir), tmp_path / "startup.log")
  _wait_for(proc, lambda: os.path.exists(os.path.join(workdir, files.LOCK_FILE)), "the lock")
  proc.send_signal(signal.SIGTERM)
  rc = _finish(proc)
  log = (tmp_path / "startup.log").read_text()
  assert rc == files.EXIT_RETRYABLE, log[-3000:]
  assert "stopped: SIGTERM received during start-up" in log and "Traceback" not in log
  assert not os.path.exists(os.path.join(workdir, files.LOCK_FILE))

  # Evaluation: a finished run's rerun goes straight to the (slow, stubbed) evaluation.
  workdir = _copy(finished_run, tmp_path)
  os.remove(os.path.join(workdir, "results.json"))
  proc = _launch(_cli_args(data_dir, workdir), tmp_path / "eval.log", EVAL_SLEEP="120")
  _wait_for(proc, lambda: "evaluating the encoder" in (tmp_path / "eval.log").read_text(),
            "the evaluation")
  proc.send_signal(signal.SIGTERM)
  rc = _finish(proc)
  log = (tmp_path / "eval.log").read_text()
  assert rc == files.EXIT_RETRYABLE, log[-3000:]
  assert "stopped: SIGTERM received during evaluation" in log and "Traceback" not in log
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  results = main_lib.train_and_evaluate(_config(data_dir), workdir)  # the rerun completes
  assert results["linear_top1"] == _FAKE_EVAL["linear_top1"] and results["steps"] == _STEPS


# ------------------------------------------------------------------ evaluate


@pytest.mark.xdist_group("run_safety_finished_run")
def test_evaluate_keeps_the_runs_checkpoints_and_results(finished_run, tmp_path, monkeypatch,
                                                         capfd):
  workdir = _copy(finished_run, tmp_path)
  with open(os.path.join(workdir, "results.json")) as f:
    training_results = json.load(f)
  # Garble the newest checkpoint's array data: evaluate must skip it, not rename it.
  for name in glob.glob(os.path.join(workdir, "checkpoints", str(_STEPS), "state", "**", "d",
                                     "*"), recursive=True):
    data = bytearray(open(name, "rb").read())
    data[::97] = bytes(b ^ 0x5A for b in data[::97])
    open(name, "wb").write(bytes(data))
  checkpoints_before = _snapshot(os.path.join(workdir, "checkpoints"))
  previous = sorted(_steps_on_disk(workdir))[-2]

  monkeypatch.setattr(evaluate, "evaluate_encoder", lambda *a, **k: {"linear_top1": 50.0,
                                                                     "knn_top1": 60.0})
  evaluate_cli.evaluate_workdir(workdir)
  monkeypatch.setattr(evaluate, "evaluate_encoder", lambda *a, **k: {"linear_top1": 51.0,
                                                                     "knn_top1": 61.0})
  evaluate_cli.evaluate_workdir(workdir, readout="augmented")

  assert _snapshot(os.path.join(workdir, "checkpoints")) == checkpoints_before
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  evaluations = results.pop("evaluations")
  assert results == training_results  # every field of the training run kept
  assert set(evaluations) == {str(previous)}
  got = {protocol: {k: v for k, v in e.items() if k != "time"}
         for protocol, e in evaluations[str(previous)].items()}
  assert got == {"fast": {"linear_top1": 50.0, "knn_top1": 60.0},
                 "augmented": {"linear_top1": 51.0, "knn_top1": 61.0}}
  err = capfd.readouterr().err
  assert "Event loop is closed" not in err  # the corrupt checkpoint's noise is gone


def test_evaluate_cli_is_absl_with_one_line_errors(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "hcl_jax.evaluate", "--workdir", str(tmp_path)],
                        cwd=_ROOT, env=support.single_process_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'config.json'} does not exist: is {str(tmp_path)!r} a training "
      "run's workdir?")
  assert "Traceback" not in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "hcl_jax.evaluate", "--readout=bogus"],
                        cwd=_ROOT, env=support.single_process_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "--readout" in proc.stderr  # absl's flag validation


# ------------------------------------------------------ damaged workdir entries


def _replace_with_file(path):
  shutil.rmtree(path)
  with open(path, "w") as f:
    f.write("not a directory\n")


def _replace_with_dir(path):
  os.remove(path)
  os.makedirs(path)


def _garble(path):
  with open(path, "w") as f:
    f.write('{"linear_top1": 9')


@pytest.mark.xdist_group("run_safety_finished_run")
@pytest.mark.parametrize("entry,damage,named", [
    ("checkpoints", _replace_with_file, "checkpoints: exists and is not a directory"),
    ("metrics.jsonl", _replace_with_dir, "metrics.jsonl: is a directory"),
    ("results.json", _garble, "results.json: not valid JSON"),
])
def test_damaged_workdir_entry_is_one_line_and_nothing_is_truncated(finished_run, data_dir,
                                                                    tmp_path, entry, damage,
                                                                    named, fake_eval):
  workdir = _copy(finished_run, tmp_path)
  damage(os.path.join(workdir, entry))
  before = _snapshot(workdir)
  with pytest.raises(run_errors.RunError) as err:
    main_lib.train_and_evaluate(_config(data_dir), workdir)
  assert named in str(err.value) and os.path.join(workdir, entry) in str(err.value)
  assert "\n" not in str(err.value)
  assert _snapshot(workdir) == before  # metrics.jsonl and the rest as they were


@pytest.mark.xdist_group("run_safety_finished_run")
def test_evaluate_checks_results_json_before_evaluating(finished_run, tmp_path, monkeypatch):
  workdir = _copy(finished_run, tmp_path)
  _garble(os.path.join(workdir, "results.json"))
  calls = []
  monkeypatch.setattr(evaluate, "evaluate_encoder", lambda *a, **k: calls.append(1) or {})
  with pytest.raises(run_errors.RunError, match="results.json: not valid JSON") as err:
    evaluate_cli.evaluate_workdir(workdir)
  assert os.path.join(workdir, "results.json") in str(err.value)
  assert calls == []  # refused before any evaluation
  # The command line: one line, exit 1, before the backend starts.
  proc = subprocess.run([sys.executable, "-m", "hcl_jax.evaluate", "--workdir", workdir],
                        cwd=_ROOT, env=support.single_process_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: {os.path.join(workdir, 'results.json')}: not valid JSON")


@pytest.mark.xdist_group("run_safety_finished_run")
def test_training_rerun_keeps_the_evaluations_recorded_by_evaluate(finished_run, data_dir,
                                                                   tmp_path, fake_eval):
  workdir = _copy(finished_run, tmp_path)
  path = os.path.join(workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  earlier = {str(_STEPS): {"augmented": {"linear_top1": 12.5, "knn_top1": 25.0}}}
  with open(path, "w") as f:
    json.dump({**results, "evaluations": earlier}, f)
  main_lib.train_and_evaluate(_config(data_dir), workdir)  # resumes at the end, evaluates again
  with open(path) as f:
    assert json.load(f)["evaluations"] == earlier


def test_checkpoint_past_the_configs_end_is_refused_in_one_line(tmp_path):
  from hcl_jax.run.checkpointing import Restored
  config = support.digits_config()
  with pytest.raises(run_errors.RunError) as err:
    lifecycle.check_resumable(Restored(44, None, {}), 22, 8, config, str(tmp_path))
  message = str(err.value)
  assert "checkpoint 44" in message and "22 steps" in message and "num_epochs" in message
  assert "\n" not in message


def test_resuming_on_another_device_count_prints_one_note(tmp_path, capsys):
  from hcl_jax.run.checkpointing import Restored
  config = support.digits_config()
  lifecycle.check_resumable(Restored(10, None, {"num_devices": 8}), 22, 8, config, "w")
  assert capsys.readouterr().out == ""
  lifecycle.check_resumable(Restored(10, None, {"num_devices": 8}), 22, 4, config, "w")
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1 and "saved on 8 device(s); resuming on 4" in lines[0]
