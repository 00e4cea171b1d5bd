"""launch/slurm.py: the sbatch script parsed, and run with bash and a fake
srun/scontrol (tests/fake_slurm.py) whose tasks are local processes."""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from launch import slurm  # noqa: E402
import fake_slurm  # noqa: E402  (tests/ is on sys.path under pytest)


def _script(**overrides) -> str:
  kwargs = dict(name="run1", nodes=2, gpus_per_node=8, time_limit="1-00:00:00",
                signal_seconds=300, project_dir="/shared/hcl_jax", log_dir="/shared/logs",
                command=slurm.train_command(".venv/bin/python", "configs/digits.py",
                                            "/shared/runs/run1", None, ["--config.seed=3"]))
  kwargs.update(overrides)
  return slurm.sbatch_script(**kwargs)


def _srun_line(script: str) -> list[str]:
  (line,) = [l for l in script.splitlines() if l.startswith("srun ")]
  words = shlex.split(line)
  assert words[-1] == "&"
  return words[:-1]


def test_sbatch_directives_and_srun_line():
  script = _script(partition="gpu", account="lab")
  assert script.startswith("#!/bin/bash\n")
  assert fake_slurm.directives(script) == {
      "--job-name": "run1", "--nodes": "2", "--ntasks-per-node": "1",
      "--gpus-per-node": "8", "--time": "1-00:00:00", "--requeue": "",
      "--signal": "B:TERM@300", "--open-mode": "append",
      "--output": "/shared/logs/%x-%j.out", "--partition": "gpu", "--account": "lab"}
  assert _srun_line(script) == [
      "srun", "--nodes=2", "--ntasks-per-node=1",
      ".venv/bin/python", "-m", "hcl_jax.main", "--config", "configs/digits.py",
      "--workdir", "/shared/runs/run1", "--config.seed=3"]
  assert 'scontrol requeue "$SLURM_JOB_ID"' in script
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("text, seconds", [
    ("00:10:00", 600), ("24:00:00", 86400), ("2-01:00:30", 2 * 86400 + 3600 + 30)])
def test_time_limit_seconds(text, seconds):
  assert slurm.time_limit_seconds(text) == seconds


@pytest.mark.parametrize("overrides, message", [
    (dict(time_limit="90"), "--time '90' must be HH:MM:SS"),
    (dict(time_limit="01:75:00"), "minutes and seconds must be < 60"),
    (dict(time_limit="00:05:00", signal_seconds=300), r"--signal-seconds 300 must be in \(0, 300\)"),
])
def test_bad_times_are_rejected(overrides, message):
  with pytest.raises(ValueError, match=message):
    _script(**overrides)


def test_cli_writes_the_script_and_rejects_bad_input(tmp_path, capsys):
  path = tmp_path / "r.sbatch"
  assert slurm.main(["--name", "r", "--nodes", "2", "--gpus-per-node", "4", "--time",
                     "02:00:00", "--config", "configs/digits.py", "--workdir", "/w",
                     "--script", str(path), "--", "--config.seed=1"]) == 0
  assert f"sbatch {path}" in capsys.readouterr().out
  assert _srun_line(path.read_text())[-1] == "--config.seed=1"
  assert slurm.main(["--name", "r", "--nodes", "0", "--gpus-per-node", "4", "--time",
                     "02:00:00", "--config", "c", "--workdir", "/w"]) == 1
  err = capsys.readouterr().err
  assert err.strip().splitlines() == ["error: --nodes 0 must be >= 1 and --gpus-per-node 4 >= 0."]


# Each task: what hcl_jax.distributed reads from its SLURM variables, then an
# exit status chosen by FAKE_EXIT ("wait": until SIGTERM, then 75 as the
# trainer after its save).
_TASK = """
import os, signal, sys, time
from hcl_jax import distributed
spec = distributed.detect_cluster(os.environ, on_cloud_tpu_vm=lambda: False,
                                  tpu_worker_count=lambda: None)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))
print(f"task {spec.process_id} of {spec.num_processes} ({spec.mode}) coordinator "
      f"{spec.coordinator_address}", flush=True)
if os.environ["FAKE_EXIT"] == "wait":
  while True:
    time.sleep(0.05)
sys.exit(int(os.environ["FAKE_EXIT"]))
"""


def _run_batch(tmp_path, fake_exit, *, terminate=False):
  task = tmp_path / "task.py"
  task.write_text(_TASK)
  script = tmp_path / "job.sbatch"
  script.write_text(_script(nodes=2, project_dir=str(tmp_path), log_dir=str(tmp_path),
                            command=[sys.executable, str(task)]))
  fake_slurm.install(tmp_path / "bin")
  log = tmp_path / "slurm.log"
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
             PYTHONPATH=str(REPO_ROOT), FAKE_SLURM_LOG=str(log), FAKE_EXIT=fake_exit,
             SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="node[07-08]", SLURM_NNODES="2")
  out = tmp_path / "batch.out"
  with out.open("w") as stdout:
    batch = subprocess.Popen(["bash", str(script)], env=env, stdout=stdout,
                             stderr=subprocess.STDOUT)
    try:
      if terminate:   # --signal=B:TERM@S: to the batch shell only
        deadline = time.monotonic() + 30
        while out.read_text().count("coordinator") < 2:
          assert time.monotonic() < deadline and batch.poll() is None, out.read_text()
          time.sleep(0.05)
        batch.send_signal(signal.SIGTERM)
      code = batch.wait(timeout=60)
    finally:
      if batch.poll() is None:
        batch.kill()
  return code, out.read_text(), log.read_text() if log.exists() else ""


def test_batch_script_runs_two_tasks_and_returns_their_status(tmp_path):
  code, out, log = _run_batch(tmp_path, "0")
  assert code == 0, out
  # JAX's SLURM port: 123456 % 4096 + 61440 = 62016; the step's first node.
  for rank in (0, 1):
    assert f"task {rank} of 2 (slurm) coordinator node07:62016" in out, out
  assert log == "srun tasks exited 0 0\n"
  assert "requeue" not in out


def test_batch_script_requeues_on_exit_75(tmp_path):
  code, out, log = _run_batch(tmp_path, "75")
  assert code == 75, out
  assert log == "srun tasks exited 75 75\nscontrol requeue 123456\n", log
  assert "checkpoint saved: requeueing job 123456" in out


def test_sigterm_before_the_time_limit_reaches_every_task_and_requeues(tmp_path):
  code, out, log = _run_batch(tmp_path, "wait", terminate=True)
  assert code == 75, out
  assert log == "srun tasks exited 75 75\nscontrol requeue 123456\n", log


def test_a_config_error_is_not_requeued(tmp_path):
  code, out, log = _run_batch(tmp_path, "1")
  assert code == 1, out
  assert "scontrol" not in log
