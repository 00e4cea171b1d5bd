#!/usr/bin/env python3
"""Cloud TPU launcher: from a laptop to a TPU VM or a pod slice, resumable.

  python launch/tpu.py create --name N --zone Z --accelerator-type v4-32 [--spot]
  python launch/tpu.py setup  --name N --zone Z
  python launch/tpu.py run    --name N --zone Z --config configs/cifar10.py \\
      --workdir gs://BUCKET/run1 [--data-dir gs://BUCKET/tfds] [-- --config.k=v ...]
  python launch/tpu.py logs   --name N --zone Z [--worker 0] [--follow]
  python launch/tpu.py stop   --name N --zone Z
  python launch/tpu.py delete --name N --zone Z
  python launch/tpu.py watch  --name N --zone Z --accelerator-type v4-32 --spot \\
      --config ... --workdir gs://...     (recreate + setup + run when preempted)

Every subcommand takes ``--dry-run`` (before or after the subcommand): it
prints each command instead of running it, one per line, shell-quoted,
exactly as it would run; lines starting with ``#`` are notes.

A pod slice is several hosts ("workers"); ``setup`` and ``run`` act on all of
them at once (``--worker=all``), so every host runs the same program; the
program finds the others itself (``hcl_jax.distributed``). Checkpoints go to
``--workdir gs://...``, which the training entry point resumes from, so
re-running ``run`` after a preemption continues the run.

Standard library only: it runs on a laptop with nothing but Python and gcloud.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence, TextIO

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Where things live on every worker, relative to the remote $HOME.
REMOTE_TARBALL = "hcl_jax_src.tar.gz"
REMOTE_SRC = "$HOME/hcl_jax"
REMOTE_VENV = "$HOME/hcl_jax_venv"
REMOTE_RUN_DIR = "$HOME/hcl_jax_run"
REMOTE_LOG = f"{REMOTE_RUN_DIR}/train.log"
REMOTE_PID = f"{REMOTE_RUN_DIR}/train.pid"
# jax's TPU wheels (libtpu) index, as in Google's JAX-on-TPU instructions.
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
PYTHON = "python3.11"   # pyproject: requires-python >= 3.11

_NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_GS_RE = re.compile(r"^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$")
# TPU VM states after which the VM must be deleted and created again.
_DEAD_STATES = ("PREEMPTED", "TERMINATED")


class LaunchError(Exception):
  """A bad input or a failed command; main() prints it and exits 1."""


# --------------------------------------------------------------------------
# Accelerator types.


@dataclasses.dataclass(frozen=True)
class _Generation:
  cores_per_chip: int        # the N of "vX-N" counts TensorCores on v2-v5p
  chips_per_host: int        # hosts of a multi-host slice
  single_host_max_chips: int  # slices up to this many chips are one host
  sizes: Callable[[int], bool]
  sizes_text: str
  runtime_version: str       # default TPU VM software version


def _multiple_of_8(low: int, high: int) -> Callable[[int], bool]:
  return lambda n: low <= n <= high and n % 8 == 0


_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)

# From Google's Cloud TPU docs (system architecture pages for each version).
_GENERATIONS: dict[str, _Generation] = {
    "v2": _Generation(2, 4, 4, _multiple_of_8(8, 512),
                      "multiples of 8 from 8 to 512", "tpu-ubuntu2204-base"),
    "v3": _Generation(2, 4, 4, _multiple_of_8(8, 2048),
                      "multiples of 8 from 8 to 2048", "tpu-ubuntu2204-base"),
    "v4": _Generation(2, 4, 4, _multiple_of_8(8, 8192),
                      "multiples of 8 from 8 to 8192", "tpu-ubuntu2204-base"),
    "v5p": _Generation(2, 4, 4, _multiple_of_8(8, 17920),
                       "multiples of 8 from 8 to 17920", "v2-alpha-tpuv5"),
    # v5e and v6e name slices by chips; up to 8 chips sit on one host,
    # larger slices are made of 4-chip hosts.
    "v5litepod": _Generation(1, 4, 8, lambda n: n in _LITE_SIZES,
                             ", ".join(map(str, _LITE_SIZES)),
                             "v2-alpha-tpuv5-lite"),
    "v6e": _Generation(1, 4, 8, lambda n: n in _LITE_SIZES,
                       ", ".join(map(str, _LITE_SIZES)), "v2-alpha-tpuv6e"),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A parsed accelerator type such as ``v4-32``."""
  type: str
  generation: str
  chips: int
  hosts: int
  chips_per_host: int
  default_runtime_version: str

  def describe(self) -> str:
    workers = "worker 0" if self.hosts == 1 else f"workers 0-{self.hosts - 1}"
    return (f"{self.type} = {self.chips} chip{'s' * (self.chips > 1)} on "
            f"{self.hosts} host{'s' * (self.hosts > 1)} ({workers}, "
            f"{self.chips_per_host} chips per host)")


def parse_accelerator_type(accelerator_type: str) -> Accelerator:
  """``v4-32`` -> Accelerator(chips=16, hosts=4, ...); ValueError if invalid."""
  allowed = ", ".join(f"{g}-N" for g in _GENERATIONS)
  match = re.fullmatch(r"([a-z0-9]+)-([0-9]+)", accelerator_type or "")
  if match is None or match.group(1) not in _GENERATIONS:
    raise ValueError(
        f"accelerator type {accelerator_type!r} is not one of {allowed} "
        "(e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8).")
  name, size = match.group(1), int(match.group(2))
  gen = _GENERATIONS[name]
  if not gen.sizes(size):
    raise ValueError(
        f"accelerator type {accelerator_type!r}: {name} sizes are "
        f"{gen.sizes_text}.")
  chips = size // gen.cores_per_chip
  if chips <= gen.single_host_max_chips:
    hosts, per_host = 1, chips
  else:
    hosts, per_host = chips // gen.chips_per_host, gen.chips_per_host
  return Accelerator(accelerator_type, name, chips, hosts, per_host,
                     gen.runtime_version)


def validate_name(name: str) -> str:
  if not _NAME_RE.fullmatch(name or ""):
    raise ValueError(
        f"TPU name {name!r} is not valid: 1-63 characters, lowercase letters, "
        "digits and hyphens, starting with a letter and not ending with a "
        "hyphen.")
  return name


def validate_zone(zone: str) -> str:
  if not _ZONE_RE.fullmatch(zone or ""):
    raise ValueError(
        f"zone {zone!r} is not a Compute Engine zone like us-central2-b or "
        "europe-west4-a.")
  return zone


def validate_gs_path(flag: str, path: str) -> str:
  if not _GS_RE.fullmatch(path or ""):
    raise ValueError(f"{flag} {path!r} is not a gs://BUCKET/PATH location.")
  return path


def jax_version(requirements: pathlib.Path = REPO_ROOT / "requirements.txt"
                ) -> str:
  """The pinned ``jax==X`` of requirements.txt."""
  for line in requirements.read_text().splitlines():
    match = re.fullmatch(r"\s*jax\s*==\s*([^\s;#]+).*", line)
    if match:
      return match.group(1)
  raise LaunchError(f"no 'jax==VERSION' pin in {requirements}")


# --------------------------------------------------------------------------
# Commands (argv lists). Pure functions of the arguments: what the tests check.


def _gcloud_tpu(verb: str, args: argparse.Namespace, *extra: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name,
         f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + list(extra)


def _ssh(args: argparse.Namespace, worker: str, script: str) -> list[str]:
  return _gcloud_tpu("ssh", args, f"--worker={worker}", "--command", script)


def _one_line(statements: Sequence[str]) -> str:
  """POSIX sh statements on one line (a background ``&`` takes no ``;``).

  Remote scripts use double quotes only, so the whole script shell-quotes as
  one readable '...' word in the printed gcloud command.
  """
  line = ""
  for statement in statements:
    line += statement + (" " if statement.endswith("&") else "; ")
  return line.rstrip("; ").rstrip()


def create_commands(args: argparse.Namespace) -> list[list[str]]:
  accel = parse_accelerator_type(args.accelerator_type)
  version = args.runtime_version or accel.default_runtime_version
  cmd = _gcloud_tpu("create", args, f"--accelerator-type={accel.type}",
                    f"--version={version}")
  if args.spot:
    cmd.append("--spot")
  return [cmd]


def _local_tarball(args: argparse.Namespace) -> str:
  return str(pathlib.Path(tempfile.gettempdir()) / f"hcl_jax_src_{args.name}.tar.gz")


def setup_script(jax_pin: str) -> str:
  """Shell run on every worker: unpack the code, build the venv, install."""
  pip = f'"{REMOTE_VENV}/bin/pip"'
  return _one_line([
      "set -eu",
      # TPU VM images ship an older python; the project needs 3.11.
      f"if ! {PYTHON} -m venv --help >/dev/null 2>&1; then "
      "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive "
      f"apt-get install -y -qq {PYTHON} {PYTHON}-venv; fi",
      f'rm -rf "{REMOTE_SRC}"',
      f'mkdir -p "{REMOTE_SRC}"',
      f'tar -xzf "$HOME/{REMOTE_TARBALL}" -C "{REMOTE_SRC}"',
      f'[ -x "{REMOTE_VENV}/bin/python" ] || {PYTHON} -m venv "{REMOTE_VENV}"',
      f"{pip} install -q --upgrade pip",
      f'{pip} install -q -r "{REMOTE_SRC}/requirements.txt"',
      f'{pip} install -q "jax[tpu]=={jax_pin}" -f {LIBTPU_FIND_LINKS}',
      f'{pip} install -q --no-deps -e "{REMOTE_SRC}"',
      # Imports only: touching the TPU backend here would block on a pod
      # slice until every host did the same.
      f'"{REMOTE_VENV}/bin/python" -c "import jax, hcl_jax; '
      'print(jax.__version__)"',
  ])


def setup_commands(args: argparse.Namespace) -> list[list[str]]:
  tarball = _local_tarball(args)
  return [
      ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz",
       f"--output={tarball}", args.ref],
      _gcloud_tpu("scp", args, tarball, f"{args.name}:{REMOTE_TARBALL}",
                  "--worker=all"),
      _ssh(args, "all", setup_script(jax_version())),
  ]


def train_command(args: argparse.Namespace) -> list[str]:
  """The training program every worker runs (relative to the source dir)."""
  cmd = [f"{REMOTE_VENV}/bin/python", "-m", "hcl_jax.main",
         "--config", args.config, "--workdir", args.workdir]
  if args.data_dir:
    cmd.append(f"--config.data_dir={args.data_dir}")
  return cmd + list(args.extra)


def _remote_words(cmd: Sequence[str]) -> str:
  """Double-quotes each word so remote $HOME expands, and nothing else."""
  for word in cmd:
    if re.search(r'["\\`]|\$(?!HOME/)', word):
      raise ValueError(f"argument {word!r} contains a quote, backslash, "
                       "backtick or $: not supported in a remote command")
  return " ".join(
      word if re.fullmatch(r"[-\w./=:,@+]+", word) else f'"{word}"'
      for word in cmd)


def run_script(args: argparse.Namespace) -> str:
  """Shell run on every worker: start training detached, log to a file."""
  pid, log = f'"{REMOTE_PID}"', f'"{REMOTE_LOG}"'
  return _one_line([
      "set -eu",
      f'mkdir -p "{REMOTE_RUN_DIR}"',
      # Never two trainings on one host (e.g. run typed twice).
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
      f'echo "hcl_jax training already running (pid $(cat {pid})) on '
      '$(hostname): stop it first" >&2; exit 1; fi',
      f'cd "{REMOTE_SRC}"',
      f'echo "=== start $(date -u +%FT%TZ) on $(hostname) ===" >> {log}',
      # setsid: its own session, so a dropped ssh (SIGHUP) can't reach it
      # and stop can signal its whole process group; nohup for good measure.
      f"setsid nohup env PYTHONUNBUFFERED=1 {_remote_words(train_command(args))}"
      f" >> {log} 2>&1 < /dev/null &",
      f"echo $! > {pid}",
      f'echo "started hcl_jax training (pid $!) on $(hostname), log {REMOTE_LOG}"',
  ])


def run_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_ssh(args, "all", run_script(args))]


def logs_commands(args: argparse.Namespace) -> list[list[str]]:
  follow = " -F" if args.follow else ""
  return [_ssh(args, str(args.worker),
               f'tail -n {args.lines}{follow} "{REMOTE_LOG}"')]


def stop_script(grace_seconds: int) -> str:
  """SIGTERM the training's process group (it checkpoints), then SIGKILL."""
  pid = f'"{REMOTE_PID}"'
  return _one_line([
      f'if [ ! -f {pid} ]; then echo "no hcl_jax training on $(hostname)"; '
      "exit 0; fi",
      f"PID=$(cat {pid})",
      'if kill -0 "$PID" 2>/dev/null; then kill -TERM "-$PID"; '
      f"for _ in $(seq {grace_seconds}); do "
      'kill -0 "$PID" 2>/dev/null || break; sleep 1; done; '
      'if kill -0 "$PID" 2>/dev/null; then kill -KILL "-$PID"; '
      f'echo "killed $PID on $(hostname) after {grace_seconds} s"; '
      'else echo "stopped $PID on $(hostname)"; fi; fi',
      f"rm -f {pid}",
  ])


def stop_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_ssh(args, "all", stop_script(args.grace_seconds))]


def delete_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_gcloud_tpu("delete", args, "--quiet")]


def describe_state_command(args: argparse.Namespace) -> list[str]:
  return _gcloud_tpu("describe", args, "--format=value(state)")


def status_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_gcloud_tpu("describe", args)]


def recover_commands(args: argparse.Namespace, *, exists: bool
                     ) -> list[list[str]]:
  """After a preemption: delete, create again, set up, run (resumes)."""
  return ((delete_commands(args) if exists else []) + create_commands(args) +
          setup_commands(args) + run_commands(args))


# --------------------------------------------------------------------------
# Running commands (or printing them).


class Runner:
  """Runs commands; with dry_run, prints them shell-quoted instead."""

  def __init__(self, dry_run: bool, out: TextIO | None = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def note(self, text: str) -> None:
    for line in text.splitlines():
      print(f"# {line}", file=self.out if self.dry_run else sys.stderr,
            flush=True)

  def run(self, cmd: Sequence[str]) -> None:
    if self.dry_run:
      print(shlex.join(cmd), file=self.out, flush=True)
      return
    self.note(f"running: {shlex.join(cmd)}")
    try:
      code = subprocess.call(list(cmd))
    except FileNotFoundError:
      raise LaunchError(f"{cmd[0]} not found: install it (gcloud: "
                        "https://cloud.google.com/sdk/docs/install)") from None
    if code != 0:
      raise LaunchError(f"command failed (exit {code}): {shlex.join(cmd)}")

  def capture(self, cmd: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); never raises for a non-zero exit."""
    if self.dry_run:
      print(shlex.join(cmd), file=self.out, flush=True)
      return 0, "", ""
    try:
      done = subprocess.run(list(cmd), capture_output=True, text=True)
    except FileNotFoundError:
      raise LaunchError(f"{cmd[0]} not found") from None
    return done.returncode, done.stdout, done.stderr

  def sleep(self, seconds: float) -> None:
    time.sleep(seconds)


def _check_clean_tree(runner: Runner) -> None:
  if runner.dry_run:
    return
  code, out, _ = runner.capture(["git", "-C", str(REPO_ROOT), "status",
                                 "--porcelain", "--untracked-files=no"])
  if code == 0 and out.strip():
    runner.note("warning: uncommitted changes are NOT shipped (setup sends "
                "the committed tree of --ref)")


def _header(runner: Runner, args: argparse.Namespace) -> Accelerator | None:
  accel = (parse_accelerator_type(args.accelerator_type)
           if getattr(args, "accelerator_type", None) else None)
  where = f"zone {args.zone}" + (f", project {args.project}" if args.project else "")
  if accel is None:
    runner.note(f"TPU {args.name} ({where}); pass --accelerator-type to show "
                "its hosts")
    return None
  version = getattr(args, "runtime_version", None) or accel.default_runtime_version
  spot = "spot" if getattr(args, "spot", False) else "on-demand"
  runner.note(f"TPU {args.name} ({where}): {accel.describe()}; runtime "
              f"{version}; {spot}")
  return accel


def _validate_run(args: argparse.Namespace, accel: Accelerator | None) -> None:
  config_file = REPO_ROOT / args.config.split(":", 1)[0]
  if not config_file.is_file():
    raise ValueError(f"--config {args.config!r}: no such file in {REPO_ROOT} "
                     "(give a path relative to the repository root, e.g. "
                     "configs/digits.py)")
  if args.workdir.startswith("gs://"):
    validate_gs_path("--workdir", args.workdir)
  elif not args.local_workdir_ok:
    raise ValueError(
        f"--workdir {args.workdir!r} is not a gs:// bucket path: a TPU VM's "
        "disk is lost on preemption and the hosts of a pod slice must write "
        "one checkpoint; pass --local-workdir-ok to insist (single host only)")
  elif accel is not None and accel.hosts > 1:
    raise ValueError(
        f"--workdir {args.workdir!r}: {accel.type} has {accel.hosts} hosts, "
        "which must share one gs:// workdir")
  if args.data_dir and args.data_dir.startswith("gs://"):
    validate_gs_path("--data-dir", args.data_dir)
  for extra in args.extra:
    if not extra.startswith("--"):
      raise ValueError(f"extra training argument {extra!r} must be a flag "
                       "such as --config.batch_size=1024")


def cmd_create(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  for cmd in create_commands(args):
    runner.run(cmd)


def cmd_setup(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  runner.note(f"ship git {args.ref} to every worker, install with jax[tpu]=="
              f"{jax_version()}")
  _check_clean_tree(runner)
  for cmd in setup_commands(args):
    runner.run(cmd)


def cmd_run(runner: Runner, args: argparse.Namespace) -> None:
  accel = _header(runner, args)
  _validate_run(args, accel)
  runner.note(f"every worker runs, detached, in {REMOTE_SRC} (log "
              f"{REMOTE_LOG}): {_remote_words(train_command(args))}")
  for cmd in run_commands(args):
    runner.run(cmd)


def cmd_logs(runner: Runner, args: argparse.Namespace) -> None:
  accel = _header(runner, args)
  if args.worker < 0 or (accel and args.worker >= accel.hosts):
    hosts = accel.hosts if accel else "the number of hosts"
    raise ValueError(f"--worker {args.worker} must be in [0, {hosts})")
  for cmd in logs_commands(args):
    runner.run(cmd)


def cmd_stop(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  for cmd in stop_commands(args):
    runner.run(cmd)


def cmd_delete(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  for cmd in delete_commands(args):
    runner.run(cmd)


def cmd_status(runner: Runner, args: argparse.Namespace) -> None:
  for cmd in status_commands(args):
    runner.run(cmd)


def cmd_watch(runner: Runner, args: argparse.Namespace) -> None:
  """Polls the TPU state; on preemption (or if it is gone) recovers it."""
  accel = _header(runner, args)
  _validate_run(args, accel)
  if runner.dry_run:
    runner.note(f"every {args.poll_seconds} s:")
    runner.capture(describe_state_command(args))
    runner.note(f"if the state is {' or '.join(_DEAD_STATES)} (delete first) "
                "or the TPU is not found (no delete):")
    for cmd in recover_commands(args, exists=True):
      runner.run(cmd)
    return
  recoveries = polls = 0
  while True:
    code, out, err = runner.capture(describe_state_command(args))
    state = out.strip()
    missing = code != 0 and "NOT_FOUND" in err.upper().replace(" ", "_")
    if code != 0 and not missing:
      runner.note(f"describe failed (exit {code}), will retry: {err.strip()}")
    elif missing or state in _DEAD_STATES:
      if recoveries >= args.max_recoveries:
        raise LaunchError(f"TPU {args.name} is {state or 'gone'} and "
                          f"--max-recoveries {args.max_recoveries} is used up")
      recoveries += 1
      runner.note(f"TPU {args.name} is {state or 'not found'}: recovery "
                  f"{recoveries} (recreate, set up, run: training resumes "
                  f"from {args.workdir})")
      for cmd in recover_commands(args, exists=not missing):
        runner.run(cmd)
    else:
      runner.note(f"TPU {args.name}: {state}")
    polls += 1
    if args.max_polls and polls >= args.max_polls:
      return
    runner.sleep(args.poll_seconds)


# --------------------------------------------------------------------------
# Command line.


def _positive_int(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="See docs/launch.md.")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands instead of running them")
  # Accepted after the subcommand too; SUPPRESS keeps the global value.
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--dry-run", action="store_true",
                      default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  common.add_argument("--name", required=True, help="TPU VM / slice name")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b")
  common.add_argument("--project", default=None,
                      help="GCP project (default: gcloud's configured one)")

  accel_opt = argparse.ArgumentParser(add_help=False)
  accel_opt.add_argument("--accelerator-type", default=None,
                         help="e.g. v4-8, v4-32, v5litepod-16, v5p-8 (shows "
                         "the hosts; required by create and watch)")

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument("--runtime-version", default=None,
                      help="TPU VM software version (default by generation: "
                      "tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5 for "
                      "v5p, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e)")
  create.add_argument("--spot", action="store_true",
                      help="spot capacity: cheaper, can be preempted")

  setup = argparse.ArgumentParser(add_help=False)
  setup.add_argument("--ref", default="HEAD",
                     help="git commit/branch to ship (committed tree only)")

  run = argparse.ArgumentParser(add_help=False)
  run.add_argument("--config", required=True,
                   help="config file relative to the repo, e.g. configs/cifar10.py")
  run.add_argument("--workdir", required=True,
                   help="gs://BUCKET/PATH: checkpoints and logs; resumed from")
  run.add_argument("--data-dir", default=None,
                   help="TFDS data_dir, e.g. gs://BUCKET/tensorflow_datasets "
                   "(passed as --config.data_dir)")
  run.add_argument("--local-workdir-ok", action="store_true",
                   help="allow a non-gs:// workdir (single host; lost on "
                   "preemption)")
  run.add_argument("extra", nargs="*", metavar="-- --config.KEY=VALUE",
                   help="more flags for hcl_jax.main, after --")

  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def add(name: str, parents: list, help_text: str):
    return sub.add_parser(name, parents=[common] + parents, help=help_text,
                          description=help_text)

  p = add("create", [accel_opt, create], "create a TPU VM or pod slice")
  p.set_defaults(func=cmd_create, required_accel=True)
  p = add("setup", [accel_opt, setup], "ship this repo to every worker and "
          "install it with the TPU build of jax")
  p.set_defaults(func=cmd_setup)
  p = add("run", [accel_opt, run], "start training on every worker, detached")
  p.set_defaults(func=cmd_run)
  p = add("logs", [accel_opt], "tail one worker's training log")
  p.add_argument("--worker", type=int, default=0, help="worker index (0)")
  p.add_argument("--lines", type=_positive_int, default=100)
  p.add_argument("--follow", action="store_true", help="keep following")
  p.set_defaults(func=cmd_logs)
  p = add("stop", [accel_opt], "SIGTERM the training on every worker (it "
          "checkpoints), SIGKILL after --grace-seconds")
  p.add_argument("--grace-seconds", type=_positive_int, default=120)
  p.set_defaults(func=cmd_stop)
  p = add("delete", [accel_opt], "delete the TPU VM / slice")
  p.set_defaults(func=cmd_delete)
  p = add("status", [], "gcloud describe the TPU")
  p.set_defaults(func=cmd_status)
  p = add("watch", [accel_opt, create, setup, run],
          "poll the TPU state; when PREEMPTED/TERMINATED or gone: delete, "
          "create, setup and run again (training resumes from --workdir)")
  p.add_argument("--poll-seconds", type=_positive_int, default=300)
  p.add_argument("--max-recoveries", type=int, default=100)
  p.add_argument("--max-polls", type=int, default=0,
                 help="stop after this many polls (0: never)")
  p.set_defaults(func=cmd_watch, required_accel=True)
  return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  # Everything after "--" goes to hcl_jax.main untouched.
  extra: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  args = parser.parse_args(argv)
  if getattr(args, "extra", None) and not extra:
    parser.error(f"unexpected arguments {args.extra}: put flags for "
                 "hcl_jax.main after --")
  args.extra = extra
  if extra and args.command not in ("run", "watch"):
    parser.error(f"only run and watch pass arguments to hcl_jax.main, not "
                 f"{args.command}")
  try:
    validate_name(args.name)
    validate_zone(args.zone)
    if getattr(args, "required_accel", False) and not args.accelerator_type:
      raise ValueError(f"{args.command} needs --accelerator-type "
                       "(e.g. v4-8, v4-32, v5litepod-16, v5p-8)")
    if getattr(args, "accelerator_type", None):
      parse_accelerator_type(args.accelerator_type)
  except ValueError as e:
    parser.error(str(e))
  return args


def main(argv: Sequence[str] | None = None, runner: Runner | None = None
         ) -> int:
  args = parse_args(argv)
  runner = runner or Runner(dry_run=args.dry_run)
  try:
    args.func(runner, args)
  except (LaunchError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
