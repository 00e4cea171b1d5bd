"""launch/tpu.py against a fake gcloud that enforces gcloud's documented grammar.

Every gcloud command the launcher prints (--dry-run) is parsed by
``tests/fake_gcloud.py`` (the synopses of gcloud's reference pages, quoted
there); every command it runs goes to that fake, put first on PATH, which
keeps TPU nodes and queued resources in a state file and records any command
gcloud would reject. ``watch`` runs for real against it, with a virtual clock
(no sleeping). The remote shell scripts (preflight, run, stop, setup, the
worker wrapper) are executed with ``sh`` in a temporary $HOME with stand-ins
for the trainer, python and pip.
"""

import os
import pathlib
import re
import signal
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from launch import gcloud_commands, topology, tpu, watch, worker_scripts  # noqa: E402
import fake_gcloud  # noqa: E402  (tests/ is on sys.path under pytest)

ZONE = "us-central2-b"
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GCLOUD_QR = ["gcloud", "compute", "tpus", "queued-resources"]
RUN_ARGS = ["--config", "configs/digits.py", "--workdir", "gs://bkt/hcl/run1",
            "--data-dir", "gs://bkt/tfds"]


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
  """The fake gcloud first on PATH; returns its state file."""
  for key, value in fake_gcloud.install(tmp_path / "fake").items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # setup's tarball
  return pathlib.Path(tmp_path / "fake" / "gcloud_state.json")


def dry_run(capsys, *argv: str) -> tuple[list[str], list[list[str]]]:
  """Runs the CLI with --dry-run; returns (notes, commands), each gcloud
  command checked against gcloud's grammar."""
  assert tpu.main(["--dry-run", *argv]) == 0, capsys.readouterr().err
  lines = capsys.readouterr().out.splitlines()
  notes = [l for l in lines if l.startswith("#")]
  commands = [shlex.split(l) for l in lines if l and not l.startswith("#")]
  for cmd in commands:
    if cmd[0] == "gcloud":
      fake_gcloud.check(cmd)
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


class ClockRunner(gcloud_commands.Runner):
  """Runs commands for real (the fake gcloud on PATH) on a virtual clock."""

  def __init__(self, on_sleep=None):
    super().__init__(dry_run=False)
    self.clock = 1_800_000_000.0
    self.sleeps: list[float] = []
    self.notes: list[str] = []
    self.on_sleep = on_sleep

  def note(self, text):
    self.notes.append(text)

  def sleep(self, seconds):
    self.sleeps.append(seconds)
    self.clock += seconds
    if self.on_sleep:
      self.on_sleep()

  def now(self):
    return self.clock


def calls(state_path) -> list[str]:
  """The fake's calls as short verbs: 'tpu-vm create', 'storage ls' (without
  the launcher's `gcloud version` check before its first call)."""
  return [" ".join(c[2:4]) if c[0] == "compute" else " ".join(c[:2])
          for c in fake_gcloud.load(state_path)["calls"] if c[:1] != ["version"]]


def assert_nothing_rejected(state_path):
  assert fake_gcloud.load(state_path)["rejected"] == []


# --- the fake itself ---------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    # The launcher's old scp form: NAME is read as a local source file.
    (GCLOUD_TPU + ["scp", "t", f"--zone={ZONE}", "src.tgz", "t:dst.tgz",
                   "--worker=all"], "No such file"),
    (GCLOUD_TPU + ["create", "t", f"--zone={ZONE}"], "--version: must be"),
    (GCLOUD_TPU + ["create", "t", f"--zone={ZONE}", "--version=v",
                   "--internal-ip"], "unrecognized arguments: --internal-ip"),
    (GCLOUD_TPU + ["ssh", "t", f"--zone={ZONE}", "--worker"], "expected one"),
    (GCLOUD_TPU + ["delete", "t", "u", f"--zone={ZONE}"], "positional"),
    (GCLOUD_TPU + ["scp", "a", "b", f"--zone={ZONE}"], "remote INSTANCE:PATH"),
    (GCLOUD_QR + ["create", "q", f"--zone={ZONE}", "--runtime-version=v",
                  "--accelerator-type=v4-8"], "--node-id"),
    (GCLOUD_QR + ["create", "q", f"--zone={ZONE}", "--node-id=q",
                  "--accelerator-type=v4-8"], "--runtime-version"),
    (GCLOUD_QR + ["delete", "q", f"--zone={ZONE}", "--spot"], "--spot"),
    (["gcloud", "compute", "tpus", "tpu-vm", "start-all", "t"], "unknown"),
])
def test_fake_gcloud_rejects_what_gcloud_rejects(gcloud, argv, message):
  subprocess.run(GCLOUD_TPU + ["create", "t", f"--zone={ZONE}", "--version=v"],
                 check=True, timeout=60)
  done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
  assert done.returncode != 0 and message in done.stderr, done.stderr


def test_fake_gcloud_node_lifecycle(gcloud):
  def gc(*argv):
    return subprocess.run(["gcloud", *argv], capture_output=True, text=True,
                          timeout=60)
  where = f"--zone={ZONE}"
  assert "NOT_FOUND" in gc(*GCLOUD_TPU[1:], "describe", "t", where).stderr
  assert gc(*GCLOUD_TPU[1:], "create", "t", where, "--version=v",
            "--accelerator-type=v4-32").returncode == 0
  assert gc(*GCLOUD_TPU[1:], "describe", "t", where,
            "--format=value(state)").stdout == "READY\n"
  assert gc(*GCLOUD_TPU[1:], "ssh", "t", where, "--worker=4",
            "--command=true").returncode != 0     # v4-32 has workers 0-3
  assert gc(*GCLOUD_TPU[1:], "ssh", "t", where, "--worker=all",
            "--command", "echo 'unclosed").returncode != 0
  fake_gcloud.preempt(gcloud, "t")
  assert gc(*GCLOUD_TPU[1:], "describe", "t", where,
            "--format=value(state)").stdout == "PREEMPTED\n"
  assert gc(*GCLOUD_TPU[1:], "ssh", "t", where,
            "--command=true").returncode == 255
  assert gc(*GCLOUD_TPU[1:], "delete", "t", where, "--quiet").returncode == 0
  assert_nothing_rejected(gcloud)


# --- accelerator types -------------------------------------------------------

@pytest.mark.parametrize("accel, chips, hosts, devices", [
    ("v2-8", 4, 1, 8), ("v2-32", 16, 4, 32), ("v3-32", 16, 4, 32),
    ("v3-2048", 1024, 256, 2048),
    ("v4-8", 4, 1, 4), ("v4-16", 8, 2, 8), ("v4-32", 16, 4, 16),
    ("v4-128", 64, 16, 64), ("v4-384", 192, 48, 192),
    ("v5p-8", 4, 1, 4), ("v5p-16", 8, 2, 8), ("v5p-128", 64, 16, 64),
    ("v5litepod-1", 1, 1, 1), ("v5litepod-4", 4, 1, 4),
    ("v5litepod-8", 8, 1, 8), ("v5litepod-16", 16, 4, 16),
    ("v5litepod-256", 256, 64, 256), ("v6e-8", 8, 1, 8), ("v6e-16", 16, 4, 16),
])
def test_chips_hosts_and_devices(accel, chips, hosts, devices):
  parsed = topology.parse_accelerator_type(accel)
  assert (parsed.chips, parsed.hosts, parsed.devices) == (chips, hosts, devices)
  assert parsed.chips_per_host * parsed.hosts == chips


@pytest.mark.parametrize("bad", [
    # Sizes Google's per-generation pages do not list.
    "v2-16", "v2-64", "v2-1024", "v3-16", "v3-4096", "v4-48", "v4-96",
    "v4-8320", "v5p-4", "v5p-24", "v5p-12416", "v5litepod-12",
    "v5litepod-512", "v6e-3", "v6e-2",
    "v4-6", "v4-12", "v4-0", "v4", "V4-8", "v4_8", "v7-8", "tpu-v4-8", "",
    "v4-8 ",
])
def test_bad_accelerator_types_are_rejected(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    topology.parse_accelerator_type(bad)


def test_bad_accelerator_type_fails_the_cli(capsys):
  with pytest.raises(SystemExit) as exit_info:
    tpu.main(["--dry-run", "create", "--name", "x", "--zone", ZONE,
              "--accelerator-type", "v2-16"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "'v2-16'" in err and "v2 sizes are 8, 32, 128, 256, 512" in err


@pytest.mark.parametrize("argv, message", [
    (["--name", "Bad_Name", "--zone", ZONE], "TPU name 'Bad_Name'"),
    (["--name", "ok", "--zone", "uscentral2"], "zone 'uscentral2'"),
    (["--name", "ok", "--zone", ZONE], "create needs --accelerator-type"),
    (["--name", "ok", "--zone", ZONE, "--accelerator-type", "v4-8",
      "--create-arg", "labels=a"], "--create-arg 'labels=a'"),
])
def test_bad_name_zone_or_missing_type_fail_the_cli(capsys, argv, message):
  with pytest.raises(SystemExit):
    tpu.main(["--dry-run", "create", *argv])
  assert message in capsys.readouterr().err


# --- dry runs (every printed gcloud command grammar-checked) ----------------

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


def test_create_multi_host_spot_with_network_flags(capsys):
  notes, commands = dry_run(
      capsys, "create", "--name", "hcl-pod", "--zone", ZONE, "--project",
      "my-proj", "--accelerator-type", "v4-32", "--spot", "--runtime-version",
      "my-rt", "--internal-ip", "--network", "net", "--subnetwork", "sub",
      "--service-account", "sa@p.iam.gserviceaccount.com",
      "--create-arg=--labels=team=ml", "--create-arg=--tags=a,b")
  (cmd,) = commands
  assert option(cmd, "--accelerator-type") == "v4-32"
  assert option(cmd, "--version") == "my-rt"
  assert option(cmd, "--project") == "my-proj"
  assert option(cmd, "--network") == "net"
  assert option(cmd, "--subnetwork") == "sub"
  assert option(cmd, "--service-account") == "sa@p.iam.gserviceaccount.com"
  assert option(cmd, "--labels") == "team=ml" and option(cmd, "--tags") == "a,b"
  assert "--spot" in cmd and "--internal-ips" in cmd
  assert "16 chips on 4 hosts (workers 0-3" in notes[0] and "spot" in notes[0]


def test_create_queued(capsys):
  notes, (cmd,) = dry_run(capsys, "create", "--name", "q", "--zone", ZONE,
                          "--accelerator-type", "v5litepod-16", "--spot",
                          "--queued")
  assert cmd[:6] == GCLOUD_QR + ["create", "q"]
  assert option(cmd, "--node-id") == "q"
  assert option(cmd, "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert option(cmd, "--accelerator-type") == "v5litepod-16"
  assert "--spot" in cmd and "queued resource" in notes[0]
  _, (delete,) = dry_run(capsys, "delete", "--name", "q", "--zone", ZONE,
                         "--queued")
  assert delete[:6] == GCLOUD_QR + ["delete", "q"] and "--force" in delete
  _, (status,) = dry_run(capsys, "status", "--name", "q", "--zone", ZONE,
                         "--queued")
  assert status[:6] == GCLOUD_QR + ["describe", "q"]


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


def test_setup_ships_a_new_release_and_installs_tpu_jax(capsys):
  notes, commands = dry_run(capsys, "setup", "--name", "hcl-pod", "--zone",
                            ZONE, "--accelerator-type", "v4-32",
                            "--internal-ip")
  archive, scp, ssh = commands
  assert archive[:4] == ["git", "-C", str(REPO_ROOT), "archive"]
  tarball = option(archive, "--output")
  assert archive[-1] == "HEAD"
  release = re.search(r"release (\d{8}T\d{6}Z-[0-9a-f]{12})", notes[1]).group(1)
  commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse",
                           "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  assert release.endswith(commit)
  # [[USER@]INSTANCE:]SRC ... [[USER@]INSTANCE:]DEST: local file, then remote.
  positionals = [w for w in scp[5:] if not w.startswith("--")]
  assert positionals == [tarball, f"hcl-pod:hcl_jax_src_{release}.tar.gz"]
  assert "--worker=all" in scp and "--internal-ip" in scp
  assert ssh[:6] == GCLOUD_TPU + ["ssh", "hcl-pod"]
  assert "--worker=all" in ssh and option(ssh, "--zone") == ZONE
  script = option(ssh, "--command")
  assert f'"jax[tpu]=={pinned_jax()}"' in script
  assert f'REL="$HOME/hcl_jax_releases/{release}"' in script
  assert "rm -rf \"$HOME/hcl_jax\"" not in script


def test_run_on_a_pod_slice(capsys):
  notes, commands = dry_run(capsys, "run", "--name", "hcl-pod", "--zone", ZONE,
                            "--accelerator-type", "v4-32", *RUN_ARGS, "--",
                            "--config.batch_size=1024")
  preflight, start = commands
  for ssh in commands:
    assert ssh[:6] == GCLOUD_TPU + ["ssh", "hcl-pod"]
    assert "--worker=all" in ssh and option(ssh, "--zone") == ZONE
  assert "/tmp/libtpu_lockfile" in option(preflight, "--command")
  script = option(start, "--command")
  # The detached launch statement, parsed as the remote shell would split it.
  (launch,) = [s for s in script.split("; ") if s.startswith("setsid nohup")]
  words = shlex.split(launch)
  words = words[:words.index("&") + 1]
  train = words[words.index("-m") - 1:words.index(">>")]
  assert train == ["$REL/.venv/bin/python", "-m", "hcl_jax.main",
                   "--config", "configs/digits.py",
                   "--workdir", "gs://bkt/hcl/run1",
                   "--config.data_dir=gs://bkt/tfds",
                   "--config.batch_size=1024"]
  wrapper = words[words.index("sh") + 1:words.index("--")]
  assert wrapper == ["$REL/launch/worker_run.sh", "--pid-file", "$HOME/hcl_jax_run/train.pid",
                     "$HOME/hcl_jax_run/train.log", "gs://bkt/hcl/run1/logs",
                     str(worker_scripts.LOG_COPY_SECONDS)]
  assert words[-4:] == ["2>&1", "<", "/dev/null", "&"]
  assert any("4 hosts" in n for n in notes)
  assert any("checked for 16 devices" in n for n in notes)


@pytest.mark.parametrize("extra_argv, message", [
    (["--workdir", "/tmp/w"], "is not a gs:// bucket path"),
    (["--workdir", "/tmp/w", "--local-workdir-ok", "--accelerator-type",
      "v4-32"], "has 4 hosts"),
    (["--workdir", "gs://"], "not a gs://BUCKET/PATH"),
    (["--config", "configs/cifar10.py"], "configs/paper.py"),
    (["--config", "configs/paper.py:dataset=imagenet,method=hcl"], "dataset='imagenet'"),
    (["--", "positional"], "must be a flag"),
    (["--", "--config.name=a b\"c"], "contains a quote"),
    # The config and its overrides, loaded and checked here.
    (["--", "--config.batch_size=abc"], "--config.batch_size=abc"),
    (["--", "--config.no_such_key=1"], "no_such_key"),
    (["--", "--config.loss.beta=-1"], "config.loss.beta"),
    (["--", "--config.model.name=resnet99"], "config.model.name"),
    (["--accelerator-type", "v4-32", "--", "--config.batch_size=100"],
     "multiple of the number of devices (16)"),
    (["--", "--no_such_flag=1"], "--no_such_flag"),
])
def test_run_rejects_bad_inputs_before_any_gcloud_call(gcloud, capsys,
                                                       extra_argv, message):
  base = {"--config": "configs/digits.py", "--workdir": "gs://bkt/run"}
  argv = ["run", "--name", "t", "--zone", ZONE]
  cut = extra_argv.index("--") if "--" in extra_argv else len(extra_argv)
  flags, rest = extra_argv[:cut], extra_argv[cut:]
  for key, value in base.items():
    if key not in flags:
      argv += [key, value]
  assert tpu.main([*argv, *flags, *rest], runner=ClockRunner()) == 1
  err = capsys.readouterr().err
  assert message in err
  assert len(err.strip().splitlines()) <= 2, err
  assert fake_gcloud.load(gcloud)["calls"] == []


def test_run_local_workdir_allowed_on_one_host(capsys):
  _, (_, start) = dry_run(capsys, "run", "--name", "t", "--zone", ZONE,
                          "--accelerator-type", "v4-8", "--config",
                          "configs/digits.py", "--workdir", "/tmp/w",
                          "--local-workdir-ok")
  assert "--workdir /tmp/w" in option(start, "--command")


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


def test_watch_dry_run_prints_the_recovery(capsys):
  notes, commands = dry_run(capsys, "watch", "--name", "w", "--zone", ZONE,
                            "--accelerator-type", "v4-32", "--spot", *RUN_ARGS,
                            "--deadline", "12h", "--delete-when-done")
  verbs = [c[4] if c[:4] == GCLOUD_TPU else " ".join(c[:3]) for c in commands]
  assert verbs == ["describe", "gcloud storage ls", "delete", "create",
                   "git -C " + str(REPO_ROOT), "scp", "ssh", "ssh", "ssh"]
  assert any("PREEMPTED" in n for n in notes)


def test_reproduce_tpu_commands_parse(capsys):
  """hcl_jax.reproduce prints launch/tpu.py lines: they must be valid."""
  from hcl_jax.reproduce import runner
  (run,) = [r for r in runner.plan_runs("stl10", seeds=1, root="gs://bkt/repro",
                                            look_up_status=False)][:1]  # no bucket here
  for cmd in runner.tpu_commands(run, zone=ZONE, spot=True):
    assert cmd[:2] == ["python", "launch/tpu.py"]
    dry_run(capsys, *cmd[2:])


def test_deadline_parsing():
  now = 1_000_000.0
  assert watch.parse_deadline("90m", now) == now + 5400
  assert watch.parse_deadline("2d", now) == now + 172800
  assert watch.parse_deadline("2026-12-24T18:00Z", now) == 1798135200.0
  with pytest.raises(ValueError, match="'tomorrow'"):
    watch.parse_deadline("tomorrow", now)


# --- through the fake gcloud, for real ---------------------------------------

WATCH_ARGS = ["--name", "w", "--zone", ZONE, "--accelerator-type", "v4-32",
              "--spot", *RUN_ARGS]


def _started_trainings(state_path, name):
  node = fake_gcloud.load(state_path)["nodes"].get(name)
  return [] if node is None else [
      s for s in node["ssh"] if "worker_run.sh" in s["command"]]


def _finish_once_training_started(state_path, name="w"):
  """A ClockRunner on_sleep: once a training runs on ``name``, its results.json lands."""
  def finish():
    if _started_trainings(state_path, name):
      fake_gcloud.put_object(state_path, "gs://bkt/hcl/run1/results.json")
  return finish


def test_create_setup_run_preempt_watch_recovers_after_a_stockout(gcloud):
  state = gcloud
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  assert tpu.main(["setup", "--name", "w", "--zone", ZONE], runner=runner) == 0
  assert tpu.main(["run", *[a for a in WATCH_ARGS if a != "--spot"]],
                  runner=runner) == 0
  node = fake_gcloud.load(state)["nodes"]["w"]
  assert node["spot"] and node["workers"] == 4
  assert sorted(node["files"]) == ["0", "1", "2", "3"]   # scp --worker=all
  assert len(_started_trainings(state, "w")) == 4
  assert calls(state) == ["tpu-vm create", "tpu-vm scp", "tpu-vm ssh",
                          "tpu-vm ssh", "tpu-vm ssh"]

  fake_gcloud.preempt(state, "w")
  fake_gcloud.update(state, stockouts=1)     # the first re-create fails

  runner = ClockRunner(on_sleep=_finish_once_training_started(state))
  code = tpu.main(["watch", *WATCH_ARGS, "--poll-seconds", "300",
                   "--backoff-seconds", "60", "--deadline", "1d",
                   "--delete-when-done"], runner=runner)
  assert code == 0, runner.notes
  assert calls(state)[5:] == [
      "tpu-vm describe", "storage ls",        # PREEMPTED, not finished
      "tpu-vm delete",
      "tpu-vm describe",                       # gone
      "tpu-vm create",                         # stockout
      "tpu-vm describe",                       # after the backoff: gone
      "tpu-vm create", "tpu-vm scp", "tpu-vm ssh",   # setup
      "tpu-vm ssh", "tpu-vm ssh",              # preflight, start
      "tpu-vm describe", "storage ls",         # READY, results.json
      "tpu-vm ssh", "tpu-vm delete"]           # wait for workers, delete
  assert runner.sleeps == [60, 300]            # backoff, one poll
  assert any("create failed (attempt 1), retrying in 60 s" in n
             for n in runner.notes)
  assert any("create (attempt 2)" in n for n in runner.notes)
  assert "w" not in fake_gcloud.load(state)["nodes"]
  assert_nothing_rejected(state)


def test_run_starts_nowhere_unless_every_worker_passed_preflight(gcloud,
                                                                 capsys):
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  fake_gcloud.update(gcloud, ssh_failures=1)   # e.g. one worker refuses
  assert tpu.main(["run", *[a for a in WATCH_ARGS if a != "--spot"]],
                  runner=runner) == 1
  assert "command failed" in capsys.readouterr().err
  assert calls(gcloud) == ["tpu-vm create", "tpu-vm ssh"]   # no start
  assert _started_trainings(gcloud, "w") == []


def test_watch_rejects_a_bad_deadline(gcloud, capsys):
  assert tpu.main(["watch", *WATCH_ARGS, "--deadline", "soon"],
                  runner=ClockRunner()) == 1
  assert "--deadline 'soon'" in capsys.readouterr().err
  assert fake_gcloud.load(gcloud)["calls"] == []


def test_watch_backoff_is_capped_and_stops_at_the_deadline(gcloud, capsys):
  fake_gcloud.update(gcloud, stockouts=100)
  runner = ClockRunner()
  code = tpu.main(["watch", *WATCH_ARGS, "--backoff-seconds", "60",
                   "--max-backoff-seconds", "500", "--deadline", "1h"],
                  runner=runner)
  assert code == 1
  assert "--deadline 1h reached" in capsys.readouterr().err
  assert runner.sleeps[:5] == [60, 120, 240, 480, 500]
  assert sum(runner.sleeps) == 3600            # the last sleep ends at it
  assert calls(gcloud).count("tpu-vm create") == len(runner.sleeps)
  assert_nothing_rejected(gcloud)


def test_watch_retries_a_failed_run(gcloud):
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  fake_gcloud.preempt(gcloud, "w")
  fake_gcloud.update(gcloud, ssh_failures=2)   # setup's ssh, then again
  runner = ClockRunner(on_sleep=_finish_once_training_started(gcloud))
  assert tpu.main(["watch", *WATCH_ARGS, "--backoff-seconds", "10",
                   "--deadline", "1d"], runner=runner) == 0
  assert runner.sleeps[:2] == [10, 20]
  assert len(_started_trainings(gcloud, "w")) == 4
  assert "w" in fake_gcloud.load(gcloud)["nodes"]   # no --delete-when-done
  assert_nothing_rejected(gcloud)


def test_watch_queued_resource(gcloud):
  fake_gcloud.update(gcloud, stockouts=2)     # the queue waits, no failure
  runner = ClockRunner(on_sleep=_finish_once_training_started(gcloud))
  assert tpu.main(["watch", *WATCH_ARGS, "--queued", "--delete-when-done",
                   "--deadline", "1d"], runner=runner) == 0
  verbs = calls(gcloud)
  assert verbs[:3] == ["queued-resources describe",
                       "storage ls", "queued-resources create"]
  assert verbs.count("queued-resources describe") >= 5   # waiting, provisioning
  assert verbs[-1] == "queued-resources delete"
  assert fake_gcloud.load(gcloud)["queued"] == {}
  assert fake_gcloud.load(gcloud)["nodes"] == {}
  assert_nothing_rejected(gcloud)


def test_watch_gives_up_after_max_recoveries(gcloud, capsys):
  runner = ClockRunner(on_sleep=lambda: fake_gcloud.preempt(gcloud, "w"))
  code = tpu.main(["watch", *WATCH_ARGS, "--max-recoveries", "1",
                   "--deadline", "1d"], runner=runner)
  assert code == 1
  assert calls(gcloud).count("tpu-vm create") == 1
  assert "--max-recoveries 1 is used up" in capsys.readouterr().err


# --- gcloud behaviours the fake models (issue 27) ------------------------------

def test_an_old_gcloud_is_refused_before_any_tpu_call(gcloud, capsys):
  fake_gcloud.update(gcloud, sdk_version="450.0.0")
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=ClockRunner()) == 1
  err = capsys.readouterr().err
  assert "gcloud 450.0.0 is older than 500.0.0" in err and "gcloud components update" in err
  assert calls(gcloud) == []
  fake_gcloud.update(gcloud, sdk_version="500.0.0")
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=ClockRunner()) == 0
  assert calls(gcloud) == ["tpu-vm create"]


@pytest.mark.parametrize("text, version", [
    ('{"Google Cloud SDK": "530.0.1", "core": "2026.12.01"}', (530, 0, 1)),
    ('{"core": "2026.12.01"}', None), ("not json", None)])
def test_parse_gcloud_version(text, version):
  assert gcloud_commands.parse_gcloud_version(text) == version


def test_a_failing_worker_fails_the_run_with_a_current_gcloud(gcloud, capsys):
  """gcloud >= the floor returns the failing worker's status for
  --worker=all; an old one returned 0 (the fake models both), which the
  version check refuses."""
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  fake_gcloud.update(gcloud, worker_exit={"2": 1})
  assert tpu.main(["run", *[a for a in WATCH_ARGS if a != "--spot"]], runner=runner) == 1
  assert "command failed (exit 1)" in capsys.readouterr().err
  assert calls(gcloud) == ["tpu-vm create", "tpu-vm ssh"]   # preflight failed: no start


def test_a_retried_ssh_reruns_the_start_script_and_it_starts_one_trainer(gcloud, tmp_path):
  """The fake's ssh drops after the start script ran, and gcloud runs it
  again; the two recorded runs of worker 0's script, executed in order on
  this machine, leave one trainer."""
  runner = ClockRunner()
  assert tpu.main(["create", "--name", "w", "--zone", ZONE, "--accelerator-type", "v4-8"],
                  runner=runner) == 0
  fake_gcloud.update(gcloud, ssh_drops=1, ssh_drop_match="worker_run.sh")
  assert tpu.main(["run", "--name", "w", "--zone", ZONE, "--accelerator-type", "v4-8",
                   *RUN_ARGS, "--skip-config-check"], runner=runner) == 0
  scripts = [s["command"] for s in _started_trainings(gcloud, "w") if s["worker"] == 0]
  assert len(scripts) == 2 and scripts[0] == scripts[1]
  home = tmp_path / "home"
  home.mkdir()
  _release(home, "r1")
  first = _sh(scripts[0], home)
  pid = int((home / "hcl_jax_run" / "train.pid").read_text())
  try:
    assert first.returncode == 0, first.stderr
    log = home / "hcl_jax_run" / "train.log"
    assert _wait_for(lambda: "trainer args" in log.read_text())
    second = _sh(scripts[1], home)
    assert second.returncode == 0 and "already running" in second.stdout
    time.sleep(1)
    assert log.read_text().count("trainer args") == 1
  finally:
    _kill_group(pid)


def test_ssh_key_not_in_agent_fails_the_command(gcloud, capfd):
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  fake_gcloud.update(gcloud, ssh_key_not_in_agent=True)
  assert tpu.main(["stop", "--name", "w", "--zone", ZONE], runner=runner) == 1
  err = capfd.readouterr().err
  assert "SSHKeyNotInAgent" in err and "command failed (exit 1)" in err


def test_watch_waits_through_the_queued_states(gcloud):
  """CREATING, ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING: waited for,
  neither dead nor ready; setup starts only at ACTIVE."""
  fake_gcloud.update(gcloud, stockouts=1)   # one describe waiting for resources
  runner = ClockRunner(on_sleep=_finish_once_training_started(gcloud))
  assert tpu.main(["watch", *WATCH_ARGS, "--queued", "--deadline", "1d"],
                  runner=runner) == 0
  waits = [n for n in runner.notes if ": waiting for ACTIVE to setup" in n]
  assert [w.split("watch w: ")[1].split(":")[0] for w in waits] == [
      "CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING"]
  create = [c for c in fake_gcloud.load(gcloud)["calls"] if c[:4] == [
      "compute", "tpus", "queued-resources", "create"]]
  assert [a for a in create[0] if a.startswith("--valid-until")] == [
      "--valid-until-duration=24h"]
  assert_nothing_rejected(gcloud)


def test_queued_create_valid_until_duration(capsys):
  _, (create,) = dry_run(capsys, "create", "--name", "q", "--zone", ZONE, "--accelerator-type",
                         "v4-32", "--queued", "--valid-until-duration", "6h")
  assert option(create, "--valid-until-duration") == "6h"
  with pytest.raises(SystemExit):
    tpu.main(["--dry-run", "create", "--name", "q", "--zone", ZONE, "--accelerator-type",
              "v4-32", "--queued", "--valid-until-duration", "forever"])
  assert "--valid-until-duration 'forever'" in capsys.readouterr().err


def test_internal_ip_notes_cloud_nat(capsys):
  notes, _ = dry_run(capsys, "create", "--name", "q", "--zone", ZONE, "--accelerator-type",
                     "v4-8", "--internal-ip")
  assert any("Cloud NAT" in n and "PyPI" in n for n in notes)


def test_watch_reports_a_storage_error_instead_of_not_finished(gcloud):
  fake_gcloud.update(gcloud, storage_error="AccessDeniedException: 403 caller does not have "
                     "storage.objects.list access")
  runner = ClockRunner()
  assert tpu.main(["create", *WATCH_ARGS[:7]], runner=runner) == 0
  fake_gcloud.preempt(gcloud, "w")
  runner = ClockRunner()
  assert tpu.main(["watch", *WATCH_ARGS, "--max-recoveries", "0", "--deadline", "1d"],
                  runner=runner) == 1
  assert any("gcloud storage ls gs://bkt/hcl/run1/results.json failed (exit 1), cannot tell "
             "whether the run finished: ERROR: (gcloud.storage.ls) AccessDeniedException: 403"
             in n for n in runner.notes), runner.notes

def test_cli_as_a_script(gcloud):
  done = subprocess.run(
      [sys.executable, str(REPO_ROOT / "launch" / "tpu.py"), "create",
       "--name", "t", "--zone", ZONE, "--accelerator-type", "v5litepod-16",
       "--spot"], capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert "16 chips on 4 hosts" in done.stderr
  assert fake_gcloud.load(gcloud)["nodes"]["t"]["workers"] == 4
  assert_nothing_rejected(gcloud)


# --- the remote scripts, executed ---------------------------------------------

FAKE_TRAINER = f"""#!/bin/sh
# python -c ...: the log copy (worker_run.sh); else a trainer until SIGTERM.
[ "$1" = "-c" ] && exec {shlex.quote(sys.executable)} "$@"
echo "trainer args: $*"
trap 'echo "trainer got TERM"; exit 0' TERM
while :; do sleep 0.1; done
"""


def _sh(script: str, home: pathlib.Path, shell: str = "sh"
        ) -> subprocess.CompletedProcess:
  return subprocess.run([shell, "-c", script],
                        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=60)


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _wait_for(predicate, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.05)
  return predicate()


def _release(home: pathlib.Path, name: str, trainer: str = FAKE_TRAINER
             ) -> pathlib.Path:
  """A set-up release: launch/worker_run.sh, a venv python, current -> it."""
  rel = home / "hcl_jax_releases" / name
  (rel / "launch").mkdir(parents=True)
  (rel / "launch" / "worker_run.sh").write_text(
      (REPO_ROOT / "launch" / "worker_run.sh").read_text())
  venv = home / "hcl_jax_venvs" / "k"
  (venv / "bin").mkdir(parents=True, exist_ok=True)
  (venv / "bin" / "python").write_text(trainer)
  (venv / "bin" / "python").chmod(0o755)
  (rel / ".venv").symlink_to(venv)
  current = home / "hcl_jax_current"
  if current.is_symlink():
    current.unlink()
  current.symlink_to(rel)
  return rel


@pytest.mark.parametrize("shell", ["sh", "bash"])  # POSIX sh; TPU VM's bash
def test_run_and_stop_scripts_on_this_machine(tmp_path, shell):
  """preflight + run start the trainer detached with the right args from the
  current release; a second run is refused; stop SIGTERMs it."""
  rel = _release(tmp_path, "r1")
  workdir = tmp_path / "workdir"
  args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, "--config",
                         "configs/digits.py", "--workdir", str(workdir),
                         "--local-workdir-ok"])
  log = tmp_path / "hcl_jax_run" / "train.log"
  pid_file = tmp_path / "hcl_jax_run" / "train.pid"

  assert _sh(worker_scripts.preflight_script(args, str(tmp_path / "lock")), tmp_path,
             shell).returncode == 0
  started = _sh(worker_scripts.run_script(args), tmp_path, shell)
  assert started.returncode == 0, started.stderr
  pid = int(pid_file.read_text())
  try:
    assert _wait_for(lambda: "trainer args" in log.read_text())
    assert (f"trainer args: -m hcl_jax.main --config configs/digits.py "
            f"--workdir {workdir}\n") in log.read_text()
    assert f"{rel}" in log.read_text()

    again = _sh(worker_scripts.preflight_script(args, str(tmp_path / "lock")), tmp_path,
                shell)
    assert again.returncode == 1 and "already running" in again.stderr
    assert int(pid_file.read_text()) == pid

    stopped = _sh(worker_scripts.stop_script(10), tmp_path, shell)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped {pid}" in stopped.stdout
    assert "trainer got TERM" in log.read_text()
    assert not pid_file.exists()
    (copied,) = (workdir / "logs").iterdir()    # the wrapper's last copy
    assert "trainer got TERM" in copied.read_text()
  finally:
    _kill_group(pid)


def test_preflight_clears_stale_processes_and_the_lockfile(tmp_path):
  """A training the pid file lost and a stale libtpu lockfile are cleared;
  --replace stops the tracked training instead of refusing."""
  _release(tmp_path, "r1")
  stale = subprocess.Popen(
      [str(tmp_path / "hcl_jax_releases" / "r1" / ".venv" / "bin" / "python"),
       "-m", "hcl_jax.main"], start_new_session=True,
      stdout=subprocess.DEVNULL)
  # Reaped as soon as it exits (a real stale process is no child of ours).
  reaper = threading.Thread(target=stale.wait, daemon=True)
  reaper.start()
  lock = tmp_path / "libtpu_lockfile"
  lock.write_text("")
  try:
    local = ["--config", "configs/digits.py", "--workdir",
             str(tmp_path / "w"), "--local-workdir-ok"]
    args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, *local])
    done = _sh(worker_scripts.preflight_script(args, str(lock)), tmp_path)
    assert done.returncode == 0, done.stderr
    reaper.join(timeout=10)
    assert stale.returncode is not None           # TERMed
    assert "stopping stale hcl_jax processes" in done.stdout
    assert not lock.exists()

    assert _sh(worker_scripts.run_script(args), tmp_path).returncode == 0
    pid = int((tmp_path / "hcl_jax_run" / "train.pid").read_text())
    args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, *local,
                           "--replace", "--grace-seconds", "10"])
    replaced = _sh(worker_scripts.preflight_script(args, str(lock)), tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert f"stopped {pid}" in replaced.stdout
  finally:
    stale.kill()
    _kill_group(pid)


def test_worker_log_is_copied_to_the_workdir(tmp_path):
  """The wrapper copies the log to WORKDIR/logs/ (through etils.epath) while
  the trainer runs, after a SIGTERM, and returns the trainer's status."""
  rel = tmp_path / "rel"
  (rel / ".venv" / "bin").mkdir(parents=True)
  (rel / ".venv" / "bin" / "python").write_text(
      f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
  (rel / ".venv" / "bin" / "python").chmod(0o755)
  log, dest = tmp_path / "train.log", tmp_path / "workdir" / "logs"
  trainer = tmp_path / "trainer.sh"
  trainer.write_text(FAKE_TRAINER)
  wrapper = subprocess.Popen(
      ["sh", str(REPO_ROOT / "launch" / "worker_run.sh"), str(log), str(dest),
       "1", "--", "sh", str(trainer), "--flag"], cwd=rel,
      stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
  try:
    copied = dest / f"stdout_{subprocess.check_output(['hostname'], text=True).strip()}.log"
    assert _wait_for(lambda: copied.exists() and
                     "trainer args: --flag" in copied.read_text(), 20)
    os.killpg(wrapper.pid, signal.SIGTERM)
    assert wrapper.wait(timeout=20) == 0
    text = copied.read_text()
    assert "trainer got TERM" in text and "=== exit 0" in text
  finally:
    _kill_group(wrapper.pid)


# Exits at once on SIGTERM with the status given as $1: the case in which the
# old wrapper's `wait` (interrupted by its trap) reported 143 although the
# trainer had already exited 0 (issue 24).
QUICK_TRAINER = """#!/bin/sh
trap 'exit $1' TERM
echo "quick trainer up"
while :; do sleep 0.05; done
"""


def _rel_with_python(tmp_path: pathlib.Path) -> pathlib.Path:
  rel = tmp_path / "rel"
  (rel / ".venv" / "bin").mkdir(parents=True)
  (rel / ".venv" / "bin" / "python").write_text(
      f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
  (rel / ".venv" / "bin" / "python").chmod(0o755)
  return rel


def _start_wrapper(rel, log, dest, *command, pid_file=None):
  pid_args = ["--pid-file", str(pid_file)] if pid_file else []
  return subprocess.Popen(
      ["sh", str(REPO_ROOT / "launch" / "worker_run.sh"), *pid_args, str(log), str(dest),
       "100", "--", *command], cwd=rel,
      stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("status", [0, 75])
def test_worker_run_reports_the_trainers_status_after_a_sigterm(tmp_path, status):
  """Five SIGTERMs to the group of a trainer that exits at once with
  ``status``: the wrapper returns that status every time (with the old
  ``wait``/``kill -0`` it returned 143 in most of these)."""
  rel = _rel_with_python(tmp_path)
  trainer = tmp_path / "quick.sh"
  trainer.write_text(QUICK_TRAINER)
  for attempt in range(5):
    log = tmp_path / f"train{attempt}.log"
    wrapper = _start_wrapper(rel, log, tmp_path / "logs", "sh", str(trainer), str(status))
    try:
      assert _wait_for(lambda: "quick trainer up" in log.read_text(), 20)
      os.killpg(wrapper.pid, signal.SIGTERM)
      assert wrapper.wait(timeout=20) == status, log.read_text()
      assert f"=== exit {status} " in log.read_text()
    finally:
      _kill_group(wrapper.pid)


def test_worker_run_returns_a_failed_trainers_status(tmp_path):
  rel = _rel_with_python(tmp_path)
  log = tmp_path / "train.log"
  wrapper = _start_wrapper(rel, log, tmp_path / "logs", "sh", "-c", "exit 7")
  assert wrapper.wait(timeout=30) == 7
  assert "=== exit 7 " in log.read_text()


def test_worker_run_refuses_a_second_trainer_while_one_lives(tmp_path):
  """--pid-file: a second start beside a live one exits 3 and starts
  nothing; the first keeps its pid file; after it ends the file is gone and
  a pid file naming a dead process does not block the next start."""
  rel = _rel_with_python(tmp_path)
  trainer = tmp_path / "quick.sh"
  trainer.write_text(QUICK_TRAINER)
  pid_file = tmp_path / "train.pid"
  log = tmp_path / "train.log"
  first = _start_wrapper(rel, log, tmp_path / "logs", "sh", str(trainer), "0",
                         pid_file=pid_file)
  try:
    assert _wait_for(lambda: "quick trainer up" in log.read_text(), 20)
    assert pid_file.read_text().strip() == str(first.pid)
    second = _start_wrapper(rel, log, tmp_path / "logs", "sh", str(trainer), "0",
                            pid_file=pid_file)
    assert second.wait(timeout=20) == 3
    assert f"already running (pid {first.pid})" in log.read_text()
    assert log.read_text().count("quick trainer up") == 1
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert not pid_file.exists()
  finally:
    _kill_group(first.pid)
  pid_file.write_text("999999999\n")   # no such process: a run killed hard
  third = _start_wrapper(rel, log, tmp_path / "logs", "sh", "-c", "exit 0", pid_file=pid_file)
  assert third.wait(timeout=30) == 0
  assert not pid_file.exists()


def test_a_retried_run_ssh_does_not_start_a_second_trainer(tmp_path):
  """gcloud's ssh retries the run command when ssh exits 255; the retry runs
  the same script again on the worker: it finds the first trainer, says so,
  exits 0 and starts nothing."""
  rel = _release(tmp_path, "r1")
  args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, "--config",
                         "configs/digits.py", "--workdir", str(tmp_path / "workdir"),
                         "--local-workdir-ok"])
  log = tmp_path / "hcl_jax_run" / "train.log"
  pid_file = tmp_path / "hcl_jax_run" / "train.pid"
  started = _sh(worker_scripts.run_script(args), tmp_path)
  assert started.returncode == 0, started.stderr
  pid = int(pid_file.read_text())
  try:
    assert f"started hcl_jax training (pid {pid})" in started.stdout
    assert _wait_for(lambda: "trainer args" in log.read_text())
    retried = _sh(worker_scripts.run_script(args), tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert f"already running (pid {pid})" in retried.stdout
    time.sleep(1)
    assert log.read_text().count("trainer args") == 1
    assert int(pid_file.read_text()) == pid
    assert _sh(worker_scripts.stop_script(10), tmp_path).returncode == 0
  finally:
    _kill_group(pid)
  assert rel.exists()


FAKE_PYTHON311 = """#!/bin/sh
# python3.11 -m venv [--help | DIR]: a venv whose pip and python do nothing.
if [ "$1 $2" = "-m venv" ]; then
  [ "$3" = "--help" ] && exit 0
  mkdir -p "$3/bin"
  printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/pip"
  printf '#!/bin/sh\\necho python "$@"\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
  exit 0
fi
exit 1
"""


def test_setup_never_removes_the_running_release(tmp_path):
  """Each setup unpacks into a new release and repoints current; releases
  beyond the newest three go, except the one a training runs from."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python3.11").write_text(FAKE_PYTHON311)
  (bin_dir / "python3.11").chmod(0o755)
  tarball = tmp_path / "src.tar.gz"
  subprocess.run(["tar", "-czf", str(tarball), "-C", str(REPO_ROOT),
                  "requirements.txt", "launch"], check=True)
  env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin"}

  def setup(release):
    (tmp_path / f"hcl_jax_src_{release}.tar.gz").write_bytes(
        tarball.read_bytes())
    done = subprocess.run(["bash", "-c", worker_scripts.setup_script("0.0", release)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tmp_path / "hcl_jax_releases" / release

  first = setup("20260101T000000Z-a")
  assert (tmp_path / "hcl_jax_current").resolve() == first
  training = subprocess.Popen(["sleep", "60"], cwd=first)
  run_dir = tmp_path / "hcl_jax_run"
  run_dir.mkdir()
  (run_dir / "train.pid").write_text(str(training.pid))
  try:
    later = [setup(f"2026010{i}T000000Z-b") for i in range(2, 7)]
    kept = sorted(p.name for p in (tmp_path / "hcl_jax_releases").iterdir())
    assert kept == [first.name] + [p.name for p in later[-3:]]
    assert (first / "requirements.txt").exists()
    assert (tmp_path / "hcl_jax_current").resolve() == later[-1]
    venvs = list((tmp_path / "hcl_jax_venvs").iterdir())
    assert len(venvs) == 1 and (venvs[0] / ".complete").exists()  # reused
  finally:
    training.kill()


def test_remote_scripts_are_valid_sh():
  args = tpu.parse_args(["run", "--name", "t", "--zone", ZONE, *RUN_ARGS])
  for script in (worker_scripts.setup_script("1.0", "r"), worker_scripts.run_script(args),
                 worker_scripts.preflight_script(args), worker_scripts.stop_script(5),
                 worker_scripts.wait_script(5)):
    subprocess.run(["sh", "-n", "-c", script], check=True, timeout=10)
