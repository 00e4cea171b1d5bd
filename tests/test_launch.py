"""launch/tpu.py: dry-run commands, input validation, watch, remote scripts.

Nothing here talks to Google Cloud: the dry run prints the commands, which
are parsed back with shlex; ``watch`` runs against a scripted fake runner;
the remote run/stop shell scripts are executed for real with ``sh`` in a
temporary $HOME, with a stand-in for the training program.
"""

import io
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from launch import tpu  # noqa: E402

ZONE = "us-central2-b"
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_ARGS = ["--config", "configs/digits.py", "--workdir", "gs://bkt/hcl/run1",
            "--data-dir", "gs://bkt/tfds"]


def dry_run(capsys, *argv: str) -> tuple[list[str], list[list[str]]]:
  """Runs the CLI with --dry-run; returns (note lines, parsed commands)."""
  assert tpu.main(["--dry-run", *argv]) == 0
  lines = capsys.readouterr().out.splitlines()
  notes = [l for l in lines if l.startswith("#")]
  commands = [shlex.split(l) for l in lines if l and not l.startswith("#")]
  return notes, commands


def option(cmd: list[str], name: str) -> str:
  """The value of --name=value or --name value in a parsed command."""
  for i, word in enumerate(cmd):
    if word.startswith(name + "="):
      return word[len(name) + 1:]
    if word == name:
      return cmd[i + 1]
  raise AssertionError(f"{name} not in {cmd}")


def pinned_jax() -> str:
  text = (REPO_ROOT / "requirements.txt").read_text()
  return re.search(r"^jax==(\S+)$", text, re.M).group(1)


# --- accelerator types -------------------------------------------------------

@pytest.mark.parametrize("accel, chips, hosts", [
    ("v2-8", 4, 1), ("v3-32", 16, 4),
    ("v4-8", 4, 1), ("v4-16", 8, 2), ("v4-32", 16, 4), ("v4-128", 64, 16),
    ("v5p-8", 4, 1), ("v5p-16", 8, 2), ("v5p-128", 64, 16),
    ("v5litepod-1", 1, 1), ("v5litepod-4", 4, 1), ("v5litepod-8", 8, 1),
    ("v5litepod-16", 16, 4), ("v5litepod-256", 256, 64),
    ("v6e-8", 8, 1), ("v6e-16", 16, 4),
])
def test_chips_and_hosts(accel, chips, hosts):
  parsed = tpu.parse_accelerator_type(accel)
  assert (parsed.chips, parsed.hosts) == (chips, hosts)
  assert parsed.chips_per_host * parsed.hosts == chips


@pytest.mark.parametrize("bad", [
    "v4-6", "v4-12", "v4-0", "v4", "V4-8", "v4_8", "v7-8", "tpu-v4-8", "",
    "v5litepod-12", "v5litepod-512", "v5p-4", "v6e-3", "v4-8 ",
])
def test_bad_accelerator_types_are_rejected(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    tpu.parse_accelerator_type(bad)


def test_bad_accelerator_type_fails_the_cli(capsys):
  with pytest.raises(SystemExit) as exit_info:
    tpu.main(["--dry-run", "create", "--name", "x", "--zone", ZONE,
              "--accelerator-type", "v4-12"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "'v4-12'" in err and "multiples of 8" in err


@pytest.mark.parametrize("argv, message", [
    (["--name", "Bad_Name", "--zone", ZONE], "TPU name 'Bad_Name'"),
    (["--name", "ok", "--zone", "uscentral2"], "zone 'uscentral2'"),
    (["--name", "ok", "--zone", ZONE], "create needs --accelerator-type"),
])
def test_bad_name_zone_or_missing_type_fail_the_cli(capsys, argv, message):
  with pytest.raises(SystemExit):
    tpu.main(["--dry-run", "create", *argv])
  assert message in capsys.readouterr().err


# --- dry runs ----------------------------------------------------------------

def test_create_single_host_on_demand(capsys):
  notes, commands = dry_run(capsys, "create", "--name", "hcl-1", "--zone", ZONE,
                            "--accelerator-type", "v4-8")
  (cmd,) = commands
  assert cmd[:6] == GCLOUD_TPU + ["create", "hcl-1"]
  assert option(cmd, "--zone") == ZONE
  assert option(cmd, "--accelerator-type") == "v4-8"
  assert option(cmd, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" not in cmd and not any(w.startswith("--project") for w in cmd)
  assert "4 chips on 1 host" in notes[0] and "on-demand" in notes[0]


def test_create_multi_host_spot_with_project(capsys):
  notes, commands = dry_run(capsys, "create", "--name", "hcl-pod", "--zone",
                            ZONE, "--project", "my-proj", "--accelerator-type",
                            "v4-32", "--spot", "--runtime-version", "my-rt")
  (cmd,) = commands
  assert option(cmd, "--accelerator-type") == "v4-32"
  assert option(cmd, "--version") == "my-rt"
  assert option(cmd, "--project") == "my-proj"
  assert "--spot" in cmd
  assert "16 chips on 4 hosts (workers 0-3" in notes[0] and "spot" in notes[0]


def test_default_runtime_versions(capsys):
  for accel, version in [("v5p-8", "v2-alpha-tpuv5"),
                         ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                         ("v6e-8", "v2-alpha-tpuv6e")]:
    _, (cmd,) = dry_run(capsys, "create", "--name", "t", "--zone", ZONE,
                        "--accelerator-type", accel)
    assert option(cmd, "--version") == version


def test_dry_run_flag_after_the_subcommand(capsys):
  assert tpu.main(["delete", "--dry-run", "--name", "t", "--zone", ZONE]) == 0
  (line,) = [l for l in capsys.readouterr().out.splitlines()
             if not l.startswith("#")]
  assert shlex.split(line) == GCLOUD_TPU + ["delete", "t", f"--zone={ZONE}",
                                            "--quiet"]


def test_setup_ships_the_repo_and_installs_tpu_jax(capsys):
  _, commands = dry_run(capsys, "setup", "--name", "hcl-pod", "--zone", ZONE,
                        "--accelerator-type", "v4-32")
  archive, scp, ssh = commands
  assert archive[:4] == ["git", "-C", str(REPO_ROOT), "archive"]
  tarball = option(archive, "--output")
  assert archive[-1] == "HEAD"
  assert scp[:6] == GCLOUD_TPU + ["scp", "hcl-pod"]
  assert tarball in scp and "--worker=all" in scp
  assert ssh[:6] == GCLOUD_TPU + ["ssh", "hcl-pod"]
  assert "--worker=all" in ssh and option(ssh, "--zone") == ZONE
  script = option(ssh, "--command")
  assert f'"jax[tpu]=={pinned_jax()}"' in script
  assert "install -q -r" in script and "requirements.txt" in script
  assert "tar -xzf" in script


def test_run_on_a_pod_slice(capsys):
  notes, commands = dry_run(capsys, "run", "--name", "hcl-pod", "--zone", ZONE,
                            "--accelerator-type", "v4-32", *RUN_ARGS, "--",
                            "--config.batch_size=1024")
  (ssh,) = commands
  assert ssh[:6] == GCLOUD_TPU + ["ssh", "hcl-pod"]
  assert "--worker=all" in ssh and option(ssh, "--zone") == ZONE
  script = option(ssh, "--command")
  # The detached launch statement, parsed as the remote shell would split it.
  (launch,) = [s for s in script.split("; ") if s.startswith("setsid nohup")]
  words = shlex.split(launch)
  words = words[:words.index("&") + 1]
  train = words[words.index("-m") - 1:words.index(">>")]
  assert train == ["$HOME/hcl_jax_venv/bin/python", "-m", "hcl_jax.main",
                   "--config", "configs/digits.py",
                   "--workdir", "gs://bkt/hcl/run1",
                   "--config.data_dir=gs://bkt/tfds",
                   "--config.batch_size=1024"]
  assert words[words.index(">>") + 1] == "$HOME/hcl_jax_run/train.log"
  assert words[-4:] == ["2>&1", "<", "/dev/null", "&"]
  assert 'cd "$HOME/hcl_jax"' in script
  assert 'echo $! > "$HOME/hcl_jax_run/train.pid"' in script
  assert any("4 hosts" in n for n in notes)


@pytest.mark.parametrize("extra_argv, message", [
    (["--workdir", "/tmp/w"], "is not a gs:// bucket path"),
    (["--workdir", "/tmp/w", "--local-workdir-ok", "--accelerator-type",
      "v4-32"], "has 4 hosts"),
    (["--workdir", "gs://"], "not a gs://BUCKET/PATH"),
    (["--config", "configs/missing.py"], "no such file"),
    (["--", "positional"], "must be a flag"),
    (["--", "--config.name=a b\"c"], "contains a quote"),
])
def test_run_rejects_bad_inputs(capsys, extra_argv, message):
  base = {"--config": "configs/digits.py", "--workdir": "gs://bkt/run"}
  argv = ["run", "--name", "t", "--zone", ZONE]
  cut = extra_argv.index("--") if "--" in extra_argv else len(extra_argv)
  flags, rest = extra_argv[:cut], extra_argv[cut:]
  for key, value in base.items():
    if key not in flags:
      argv += [key, value]
  assert tpu.main(["--dry-run", *argv, *flags, *rest]) == 1
  assert message in capsys.readouterr().err


def test_run_local_workdir_allowed_on_one_host(capsys):
  _, (ssh,) = dry_run(capsys, "run", "--name", "t", "--zone", ZONE,
                      "--accelerator-type", "v4-8", "--config",
                      "configs/digits.py", "--workdir", "/tmp/w",
                      "--local-workdir-ok")
  assert "--workdir /tmp/w" in option(ssh, "--command")


def test_logs_and_stop(capsys):
  _, (logs,) = dry_run(capsys, "logs", "--name", "t", "--zone", ZONE,
                       "--worker", "3", "--follow", "--lines", "20")
  assert "--worker=3" in logs
  assert shlex.split(option(logs, "--command")) == [
      "tail", "-n", "20", "-F", "$HOME/hcl_jax_run/train.log"]
  _, (stop,) = dry_run(capsys, "stop", "--name", "t", "--zone", ZONE,
                       "--grace-seconds", "30")
  script = option(stop, "--command")
  assert "--worker=all" in stop
  assert script.index("kill -TERM") < script.index("kill -KILL")
  assert "seq 30" in script


def test_logs_worker_out_of_range(capsys):
  assert tpu.main(["--dry-run", "logs", "--name", "t", "--zone", ZONE,
                   "--accelerator-type", "v4-32", "--worker", "4"]) == 1
  assert "--worker 4 must be in [0, 4)" in capsys.readouterr().err


def test_remote_scripts_are_valid_sh():
  args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, *RUN_ARGS])
  for script in (tpu.setup_script("1.0"), tpu.run_script(args),
                 tpu.stop_script(5)):
    subprocess.run(["sh", "-n", "-c", script], check=True, timeout=10)


def test_cli_as_a_script():
  done = subprocess.run(
      [sys.executable, str(REPO_ROOT / "launch" / "tpu.py"), "--dry-run",
       "create", "--name", "t", "--zone", ZONE, "--accelerator-type",
       "v5litepod-16", "--spot"],
      capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert "16 chips on 4 hosts" in done.stdout
  assert "--accelerator-type=v5litepod-16" in done.stdout


# --- watch -------------------------------------------------------------------

class ScriptedRunner(tpu.Runner):
  """Records commands; describe answers come from a script of states."""

  def __init__(self, states: list[tuple[int, str, str]]):
    super().__init__(dry_run=False, out=io.StringIO())
    self.states = list(states)
    self.commands: list[list[str]] = []
    self.sleeps: list[float] = []

  def note(self, text: str) -> None:
    pass

  def run(self, cmd):
    self.commands.append(list(cmd))

  def capture(self, cmd):
    assert cmd[4] == "describe" and "--format=value(state)" in cmd
    return self.states.pop(0)

  def sleep(self, seconds):
    self.sleeps.append(seconds)


def _watch(states, *more) -> ScriptedRunner:
  runner = ScriptedRunner(states)
  code = tpu.main(["watch", "--name", "w", "--zone", ZONE, "--accelerator-type",
                   "v4-32", "--spot", *RUN_ARGS, "--poll-seconds", "7",
                   "--max-polls", str(len(states)), *more], runner=runner)
  runner.code = code
  return runner


def _verbs(commands):
  return [c[4] if c[:4] == GCLOUD_TPU else c[0] for c in commands]


def test_watch_recovers_a_preempted_slice():
  runner = _watch([(0, "READY\n", ""), (0, "PREEMPTED\n", ""),
                   (0, "CREATING\n", ""), (0, "READY\n", "")])
  assert runner.code == 0
  assert _verbs(runner.commands) == ["delete", "create", "git", "scp", "ssh",
                                     "ssh"]
  create = runner.commands[1]
  assert "--spot" in create and option(create, "--accelerator-type") == "v4-32"
  assert "hcl_jax.main" in option(runner.commands[-1], "--command")
  assert runner.sleeps == [7, 7, 7]


def test_watch_creates_a_missing_slice_without_delete():
  runner = _watch([(1, "", "ERROR: (gcloud) NOT_FOUND: Resource not found")])
  assert _verbs(runner.commands) == ["create", "git", "scp", "ssh", "ssh"]


def test_watch_ignores_a_failed_describe():
  runner = _watch([(1, "", "ERROR: network unreachable"), (0, "READY", "")])
  assert runner.commands == []


def test_watch_gives_up_after_max_recoveries(capsys):
  runner = _watch([(0, "PREEMPTED", ""), (0, "PREEMPTED", "")],
                  "--max-recoveries", "1")
  assert runner.code == 1
  assert _verbs(runner.commands).count("create") == 1
  assert "--max-recoveries 1 is used up" in capsys.readouterr().err


def test_watch_dry_run_prints_the_recovery(capsys):
  notes, commands = dry_run(capsys, "watch", "--name", "w", "--zone", ZONE,
                            "--accelerator-type", "v4-32", "--spot", *RUN_ARGS)
  assert _verbs(commands) == ["describe", "delete", "create", "git", "scp",
                              "ssh", "ssh"]
  assert any("PREEMPTED" in n for n in notes)


# --- the remote run/stop scripts, executed ---------------------------------

FAKE_TRAINER = """#!/bin/sh
echo "trainer args: $*"
trap 'echo "trainer got TERM"; exit 0' TERM
while :; do sleep 0.1; done
"""


def _sh(shell: str, script: str, home: pathlib.Path
        ) -> subprocess.CompletedProcess:
  return subprocess.run([shell, "-c", script], env={"HOME": str(home),
                                                   "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", ["sh", "bash"])  # POSIX sh; TPU VM's bash
def test_run_and_stop_scripts_on_this_machine(tmp_path, shell):
  """run starts the trainer detached with the right args; stop SIGTERMs it."""
  (tmp_path / "hcl_jax").mkdir()
  python = tmp_path / "hcl_jax_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_TRAINER)
  python.chmod(0o755)
  args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, *RUN_ARGS])
  log = tmp_path / "hcl_jax_run" / "train.log"
  pid_file = tmp_path / "hcl_jax_run" / "train.pid"

  started = _sh(shell, tpu.run_script(args), tmp_path)
  assert started.returncode == 0, started.stderr
  pid = int(pid_file.read_text())
  try:
    deadline = time.monotonic() + 10
    while "trainer args" not in log.read_text() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert ("trainer args: -m hcl_jax.main --config configs/digits.py "
            "--workdir gs://bkt/hcl/run1 --config.data_dir=gs://bkt/tfds"
            ) in log.read_text()

    again = _sh(shell, tpu.run_script(args), tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    assert int(pid_file.read_text()) == pid

    stopped = _sh(shell, tpu.stop_script(10), tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped {pid}" in stopped.stdout
    assert "trainer got TERM" in log.read_text()
    assert not pid_file.exists()
  finally:
    subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
