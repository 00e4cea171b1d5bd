#!/usr/bin/env python3
"""Cloud TPU launcher: from a laptop to a TPU VM or a pod slice, resumable.

  python launch/tpu.py create --name N --zone Z --accelerator-type v4-32 [--spot] [--queued]
  python launch/tpu.py setup  --name N --zone Z
  python launch/tpu.py run    --name N --zone Z --accelerator-type v4-32 \\
      --config configs/paper.py:dataset=cifar10,method=hcl --workdir gs://BUCKET/run1 \\
      [--data-dir gs://BUCKET/tfds] [-- --config.k=v ...]
  python launch/tpu.py logs   --name N --zone Z [--worker 0] [--follow]
  python launch/tpu.py stop   --name N --zone Z
  python launch/tpu.py delete --name N --zone Z [--queued]
  python launch/tpu.py status --name N --zone Z [--queued]
  python launch/tpu.py watch  --name N --zone Z --accelerator-type v4-32 --spot \\
      --config ... --workdir gs://... [--deadline 24h] [--delete-when-done]
      (create, set up and run; again after every preemption; retries with
      capped exponential backoff)

Every subcommand takes ``--dry-run`` (before or after the subcommand): it
prints each command instead of running it, one per line, shell-quoted,
exactly as it would run; lines starting with ``#`` are notes.

A pod slice is several hosts ("workers"); ``setup`` and ``run`` act on all of
them at once (``--worker=all``), so every host runs the same program; the
program finds the others itself (``hcl_jax.distributed``). Checkpoints go to
``--workdir gs://...``, which the training entry point resumes from, so
re-running ``run`` after a preemption continues the run.

Standard library only to create, set up and watch a TPU: it runs on a laptop
with Python and gcloud. ``run`` and ``watch`` also load the config with the
project's own parser and checks (``hcl_jax.config.check``, as ``hcl_jax.main``)
before any gcloud call, so they want the project's requirements installed
(``--skip-config-check`` to do without).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence, TextIO

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # hcl_jax of this checkout (its standard-library parts here)
  sys.path.insert(0, str(REPO_ROOT))
from hcl_jax.config.values import positive_int_arg  # noqa: E402

# Where things live on every worker, relative to the remote $HOME.
# Each setup unpacks into a new release folder; a training keeps running
# from the release it started in while a later setup installs the next one.
REMOTE_RELEASES = "$HOME/hcl_jax_releases"
REMOTE_CURRENT = "$HOME/hcl_jax_current"     # symlink -> the newest release
REMOTE_VENVS = "$HOME/hcl_jax_venvs"         # one per requirements + jax pin
REMOTE_RUN_DIR = "$HOME/hcl_jax_run"
REMOTE_LOG = f"{REMOTE_RUN_DIR}/train.log"
REMOTE_PID = f"{REMOTE_RUN_DIR}/train.pid"
KEEP_RELEASES = 3
# libtpu's lock: a process killed hard leaves it behind and the next one
# fails with "TPU in use" / "Device or resource busy".
LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
LOG_COPY_SECONDS = 300
STALE_GRACE_SECONDS = 30   # for a stale training to exit after SIGTERM
# jax's TPU wheels (libtpu) index, as in Google's JAX-on-TPU instructions.
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
PYTHON = "python3.11"   # pyproject: requires-python >= 3.11
# The oldest Google Cloud SDK this launcher accepts. A floor, not a measured
# boundary: its commands were checked against the gcloud reference of
# 2026-12, and old releases are known to differ where it matters (a
# `tpu-vm ssh --worker=all` that returned 0 although a worker's command
# failed; `gcloud storage` and queued resources' --valid-until-duration
# missing). 500.0.0 (Nov 2024) has all of these. `gcloud components update`.
MIN_GCLOUD_VERSION = (500, 0, 0)
# A queued resource not provisioned by then is dropped instead of waiting
# forever (gcloud's --valid-until-duration; watch then creates a new one).
DEFAULT_QUEUE_VALID_FOR = "24h"

_NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_GS_RE = re.compile(r"^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$")
# TPU VM node states after which the VM must be deleted and created again,
# and the queued-resource states after which the request must be.
_DEAD_NODE_STATES = ("PREEMPTED", "TERMINATED")
_DEAD_QUEUED_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")


class LaunchError(Exception):
  """A bad input or a failed command; main() prints it and exits 1."""


# --------------------------------------------------------------------------
# Accelerator types (Google's Cloud TPU pages "TPU v2" ... "TPU v6e").


def _cube_slices(max_cores: int) -> Callable[[int], bool]:
  # v4, v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4 chips below one 4x4x4 cube, then
  # whole cubes (each dimension a multiple of 4): multiples of 128 cores.
  return lambda n: n in (8, 16, 32, 64) or (0 < n <= max_cores and n % 128 == 0)


@dataclasses.dataclass(frozen=True)
class _Generation:
  cores_per_chip: int         # the N of "vX-N" counts TensorCores on v2-v5p
  devices_per_chip: int       # JAX devices (v4/v5p: one megacore per chip)
  chips_per_host: int         # hosts (workers) of a multi-host slice
  single_host_max_chips: int  # slices up to this many chips are one host
  sizes: Callable[[int], bool]
  sizes_text: str
  runtime_version: str        # default TPU VM software version


_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
_V2_SIZES = (8, 32, 128, 256, 512)
_V3_SIZES = (8, 32, 64, 128, 256, 512, 1024, 2048)

_GENERATIONS: dict[str, _Generation] = {
    "v2": _Generation(2, 2, 4, 4, lambda n: n in _V2_SIZES,
                      ", ".join(map(str, _V2_SIZES)), "tpu-ubuntu2204-base"),
    "v3": _Generation(2, 2, 4, 4, lambda n: n in _V3_SIZES,
                      ", ".join(map(str, _V3_SIZES)), "tpu-ubuntu2204-base"),
    "v4": _Generation(2, 1, 4, 4, _cube_slices(8192),
                      "8, 16, 32, 64, then multiples of 128 up to 8192",
                      "tpu-ubuntu2204-base"),
    "v5p": _Generation(2, 1, 4, 4, _cube_slices(12288),
                       "8, 16, 32, 64, then multiples of 128 up to 12288",
                       "v2-alpha-tpuv5"),
    # v5e and v6e name slices by chips; up to 8 chips sit on one host,
    # larger slices are made of 4-chip hosts.
    "v5litepod": _Generation(1, 1, 4, 8, lambda n: n in _LITE_SIZES,
                             ", ".join(map(str, _LITE_SIZES)),
                             "v2-alpha-tpuv5-lite"),
    "v6e": _Generation(1, 1, 4, 8, lambda n: n in _LITE_SIZES,
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
  devices: int                # jax.device_count() on the slice
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
                     chips * gen.devices_per_chip, gen.runtime_version)


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


def parse_deadline(text: str, now: float) -> float:
  """``--deadline``: a duration (90m, 12h, 2d) from now, or an ISO time."""
  match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhd])", text.strip())
  if match:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return now + float(match.group(1)) * unit
  try:
    when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
  except ValueError:
    raise ValueError(f"--deadline {text!r} is neither a duration (90m, 12h, "
                     "2d) nor an ISO time (2026-12-24T18:00Z)") from None
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return when.timestamp()


def jax_version(requirements: pathlib.Path = REPO_ROOT / "requirements.txt"
                ) -> str:
  """The pinned ``jax==X`` of requirements.txt."""
  for line in requirements.read_text().splitlines():
    match = re.fullmatch(r"\s*jax\s*==\s*([^\s;#]+).*", line)
    if match:
      return match.group(1)
  raise LaunchError(f"no 'jax==VERSION' pin in {requirements}")


# --------------------------------------------------------------------------
# The training config, checked here before paying for a TPU.


def check_training_config(config: str, overrides: Sequence[str],
                          devices: int) -> None:
  """Loads ``--config`` (with its ``:ARG``) and its flags as hcl_jax.main will,
  and checks them (``hcl_jax.config.check.load_and_validate``); ValueError
  naming the bad flag or key."""
  try:
    from absl import flags
    from hcl_jax.config import check as config_check
    importlib.import_module("hcl_jax.main")   # defines hcl_jax.main's flags in flags.FLAGS
  except ImportError as e:
    raise LaunchError(
        f"checking the config locally needs the project's packages ({e}): "
        "run from its venv (pip install -r requirements.txt), or pass "
        "--skip-config-check") from None
  for flag in overrides:
    if flag.startswith("--config."):
      continue
    name = flag[2:].split("=", 1)[0]
    known = name in flags.FLAGS or (name.startswith("no") and
                                    name[2:] in flags.FLAGS)
    if not known or name in ("config", "workdir"):
      raise ValueError(f"{flag}: hcl_jax.main has no flag --{name} (config "
                       "keys are --config.KEY=VALUE)")
  config_check.load_and_validate(str(REPO_ROOT / config), overrides, devices)


# --------------------------------------------------------------------------
# Commands (argv lists). Pure functions of the arguments: what the tests check.


def _where(args: argparse.Namespace) -> list[str]:
  where = [f"--zone={args.zone}"]
  if args.project:
    where.append(f"--project={args.project}")
  return where


def _gcloud_tpu(verb: str, args: argparse.Namespace, *extra: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name,
          *_where(args), *extra]


def _gcloud_queued(verb: str, args: argparse.Namespace, *extra: str
                   ) -> list[str]:
  # The queued resource has the TPU's name, so ssh/scp address the node.
  return ["gcloud", "compute", "tpus", "queued-resources", verb, args.name,
          *_where(args), *extra]


def _connect(args: argparse.Namespace) -> list[str]:
  return ["--internal-ip"] if args.internal_ip else []


def _ssh(args: argparse.Namespace, worker: str, script: str) -> list[str]:
  return _gcloud_tpu("ssh", args, f"--worker={worker}", *_connect(args),
                     "--command", script)


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
  flags = [f"--accelerator-type={accel.type}"]
  if args.spot:
    flags.append("--spot")
  if args.internal_ip:
    flags.append("--internal-ips")
  for name in ("network", "subnetwork", "service_account"):
    if getattr(args, name):
      flags.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
  flags += list(args.create_arg)
  if args.queued:
    return [_gcloud_queued("create", args, f"--node-id={args.name}",
                           f"--runtime-version={version}",
                           f"--valid-until-duration={args.valid_until_duration}", *flags)]
  return [_gcloud_tpu("create", args, f"--version={version}", *flags)]


def _local_tarball(args: argparse.Namespace) -> str:
  return str(pathlib.Path(tempfile.gettempdir()) /
             f"hcl_jax_src_{args.name}_{args.release}.tar.gz")


def _remote_tarball(release: str) -> str:
  return f"hcl_jax_src_{release}.tar.gz"   # in the remote $HOME


def release_name(ref: str, now: float) -> str:
  """``20261201T063000Z-<commit>``: a new folder per setup, sorted by time."""
  try:
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12",
         f"{ref}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    raise LaunchError(f"--ref {ref!r} is not a commit of {REPO_ROOT}: "
                      f"{getattr(e, 'stderr', e)}".strip()) from None
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
  return f"{stamp}-{commit}"


def setup_script(jax_pin: str, release: str) -> str:
  """Shell run on every worker: unpack a new release, build its venv.

  Never touches an older release (a training may run from it); prunes
  releases beyond the newest KEEP_RELEASES except the running one.
  """
  rel = f"{REMOTE_RELEASES}/{release}"
  pip = '"$VENV/bin/pip"'
  return _one_line([
      "set -eu",
      # TPU VM images ship an older python; the project needs 3.11.
      f"if ! {PYTHON} -m venv --help >/dev/null 2>&1; then "
      "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive "
      f"apt-get install -y -qq {PYTHON} {PYTHON}-venv; fi",
      f'REL="{rel}"',
      'rm -rf "$REL.partial"',
      'mkdir -p "$REL.partial"',
      f'tar -xzf "$HOME/{_remote_tarball(release)}" -C "$REL.partial"',
      f'rm -f "$HOME/{_remote_tarball(release)}"',
      # One venv per (requirements.txt, jax pin): reused, never changed once
      # complete, so a running training's packages stay as they were.
      f'KEY=$( (cat "$REL.partial/requirements.txt"; echo "{jax_pin}") | '
      "sha256sum | cut -c1-16)",
      f'VENV="{REMOTE_VENVS}/$KEY"',
      'if [ ! -f "$VENV/.complete" ]; then rm -rf "$VENV"; '
      f'{PYTHON} -m venv "$VENV"; {pip} install -q --upgrade pip; '
      f'{pip} install -q -r "$REL.partial/requirements.txt"; '
      f'{pip} install -q "jax[tpu]=={jax_pin}" -f {LIBTPU_FIND_LINKS}; '
      'touch "$VENV/.complete"; fi',
      'ln -sfn "$VENV" "$REL.partial/.venv"',
      # Imports only (from the release folder: python -m puts it on the
      # path); touching the TPU backend here would block on a pod slice
      # until every host did the same.
      '(cd "$REL.partial" && ".venv/bin/python" -c "import jax, hcl_jax; '
      'print(jax.__version__)")',
      'mv "$REL.partial" "$REL"',
      f'ln -sfn "$REL" "{REMOTE_CURRENT}.new"',
      f'mv -Tf "{REMOTE_CURRENT}.new" "{REMOTE_CURRENT}"',
      f'RUNNING=$(readlink -f "/proc/$(cat "{REMOTE_PID}" 2>/dev/null || '
      'echo 0)/cwd" 2>/dev/null || true)',
      f'for OLD in $(ls -1d "{REMOTE_RELEASES}"/*/ | sort | '
      f"head -n -{KEEP_RELEASES}); do OLD=${{OLD%/}}; "
      '[ "$OLD" = "$RUNNING" ] || [ "$OLD" = "$REL" ] || rm -rf "$OLD"; done',
      'echo "hcl_jax release $REL ready on $(hostname)"',
  ])


def setup_commands(args: argparse.Namespace) -> list[list[str]]:
  tarball = _local_tarball(args)
  return [
      ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz",
       f"--output={tarball}", args.ref],
      # gcloud: scp [[USER@]INSTANCE:]SRC ... [[USER@]INSTANCE:]DEST
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
       f"{args.name}:{_remote_tarball(args.release)}", *_where(args),
       "--worker=all", *_connect(args)],
      _ssh(args, "all", setup_script(jax_version(), args.release)),
  ]


def train_command(args: argparse.Namespace) -> list[str]:
  """The training program every worker runs (from its release folder)."""
  cmd = [".venv/bin/python", "-m", "hcl_jax.main",
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


def _stop_statements(grace_seconds: int) -> list[str]:
  pid = f'"{REMOTE_PID}"'
  return [
      f"PID=$(cat {pid})",
      'if kill -0 "$PID" 2>/dev/null; then kill -TERM "-$PID"; '
      f"for _ in $(seq {grace_seconds}); do "
      'kill -0 "$PID" 2>/dev/null || break; sleep 1; done; '
      'if kill -0 "$PID" 2>/dev/null; then kill -KILL "-$PID"; '
      f'echo "killed $PID on $(hostname) after {grace_seconds} s"; '
      'else echo "stopped $PID on $(hostname)"; fi; fi',
      f"rm -f {pid}",
  ]


def preflight_script(args: argparse.Namespace,
                     lockfile: str = LIBTPU_LOCKFILE) -> str:
  """Every worker, before a run: refuse (or --replace) a live training, then
  clear what a dead run left: its processes and the libtpu lockfile."""
  pid = f'"{REMOTE_PID}"'
  alive = f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'
  if args.replace:
    on_alive = _one_line([f"if {alive}; then " +
                          _one_line(_stop_statements(args.grace_seconds)),
                          "fi"])
  else:
    on_alive = (f'if {alive}; then echo "hcl_jax training already running '
                f'(pid $(cat {pid})) on $(hostname): stop it first, or pass '
                '--replace" >&2; exit 1; fi')
  return _one_line([
      "set -eu",
      f'mkdir -p "{REMOTE_RUN_DIR}"',
      on_alive,
      # Trainings the pid file lost (e.g. a host that hung in
      # jax.distributed.initialize while the others died).
      f'STALE=$(pgrep -u "$(id -u)" -f "{REMOTE_RELEASES}/" | '
      'grep -vx "$$" || true)',
      'if [ -n "$STALE" ]; then echo "stopping stale hcl_jax processes" '
      '$STALE "on $(hostname)"; kill -TERM $STALE 2>/dev/null || true; '
      f"for _ in $(seq {STALE_GRACE_SECONDS}); do ALIVE=; for P in $STALE; do "
      'kill -0 "$P" 2>/dev/null && ALIVE=1; done; [ -z "$ALIVE" ] && break; '
      "sleep 1; done; kill -KILL $STALE 2>/dev/null || true; fi",
      f'if [ -e "{lockfile}" ]; then rm -f "{lockfile}" 2>/dev/null || '
      f'sudo -n rm -f "{lockfile}"; echo "removed {lockfile} on $(hostname)"; '
      "fi",
  ])


def _logs_destination(workdir: str) -> str:
  return workdir.rstrip("/") + "/logs"


def run_script(args: argparse.Namespace) -> str:
  """Shell run on every worker: start training detached, log to a file.

  ``launch/worker_run.sh`` runs the trainer and copies the log to
  WORKDIR/logs/ every LOG_COPY_SECONDS and when it exits.
  """
  pid, log = f'"{REMOTE_PID}"', f'"{REMOTE_LOG}"'
  return _one_line([
      "set -eu",
      f'mkdir -p "{REMOTE_RUN_DIR}"',
      f'REL=$(readlink -f "{REMOTE_CURRENT}" || true)',
      'if [ -z "$REL" ] || [ ! -x "$REL/.venv/bin/python" ]; then echo "no '
      'hcl_jax release on $(hostname): run setup first" >&2; exit 1; fi',
      'cd "$REL"',
      # A retried ssh (gcloud retries on exit 255, e.g. a dropped connection
      # after the start) finds the first start's trainer: not a second one.
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then echo '
      f'"hcl_jax training already running (pid $(cat {pid})) on $(hostname): '
      'not starting a second"; exit 0; fi',
      f'echo "=== start $(date -u +%FT%TZ) on $(hostname), $REL ===" >> {log}',
      # setsid: its own session, so a dropped ssh (SIGHUP) can't reach it
      # and stop can signal its whole process group; nohup for good measure.
      # worker_run.sh writes the pid file itself (noclobber: one trainer).
      f'setsid nohup sh "$REL/launch/worker_run.sh" --pid-file {pid} {log} '
      f"{_remote_words([_logs_destination(args.workdir)])} "
      # The absolute python path marks the process as ours (preflight).
      f'{LOG_COPY_SECONDS} -- env PYTHONUNBUFFERED=1 "$REL/.venv/bin/python" '
      f"{_remote_words(train_command(args)[1:])} >> {log} 2>&1 < /dev/null &",
      f"for _ in $(seq 50); do [ -s {pid} ] && break; sleep 0.1; done",
      f'echo "started hcl_jax training (pid $(cat {pid} 2>/dev/null || echo $!)) on '
      f'$(hostname), log {REMOTE_LOG}"',
  ])


def run_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_ssh(args, "all", preflight_script(args)),
          _ssh(args, "all", run_script(args))]


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
      *_stop_statements(grace_seconds),
  ])


def stop_commands(args: argparse.Namespace) -> list[list[str]]:
  return [_ssh(args, "all", stop_script(args.grace_seconds))]


def wait_script(timeout_seconds: int) -> str:
  """Waits for a finished training to exit (its last log copy included)."""
  pid = f'"{REMOTE_PID}"'
  return _one_line([
      f"if [ -f {pid} ]; then for _ in $(seq {timeout_seconds}); do "
      f'kill -0 "$(cat {pid})" 2>/dev/null || break; sleep 1; done; fi',
      'echo "hcl_jax training done on $(hostname)"',
  ])


def delete_commands(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:   # --force: its node too
    return [_gcloud_queued("delete", args, "--force", "--quiet")]
  return [_gcloud_tpu("delete", args, "--quiet")]


def describe_state_command(args: argparse.Namespace) -> list[str]:
  if args.queued:
    return _gcloud_queued("describe", args, "--format=value(state.state)")
  return _gcloud_tpu("describe", args, "--format=value(state)")


def results_command(args: argparse.Namespace) -> list[str]:
  return ["gcloud", "storage", "ls", args.workdir.rstrip("/") + "/results.json",
          *([f"--project={args.project}"] if args.project else [])]


def status_commands(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:
    return [_gcloud_queued("describe", args)]
  return [_gcloud_tpu("describe", args)]


# --------------------------------------------------------------------------
# This launcher's own command lines, for plans printed ahead of time
# (``python -m hcl_jax.reproduce --tpu-commands``).

LAUNCHER = ["python", "launch/tpu.py"]


def new_tpu_commands(*, name: str, zone: str, accelerator_type: str, config: str,
                     workdir: str, flags: Sequence[str] = (), spot: bool = False
                     ) -> list[list[str]]:
  """``launch/tpu.py`` create, setup and run: one training on a TPU VM of its own.

  Lines this launcher's parser reads back (:func:`parse_args`): ``config``
  with its ``:ARG``, ``flags`` for hcl_jax.main after ``--``. ValueError for a
  bad name, zone or accelerator type, as the command line would give.
  """
  validate_name(name)
  validate_zone(zone)
  parse_accelerator_type(accelerator_type)
  where = ["--name", name, "--zone", zone]
  accel = ["--accelerator-type", accelerator_type]
  return [[*LAUNCHER, "create", *where, *accel, *(["--spot"] if spot else [])],
          [*LAUNCHER, "setup", *where],
          [*LAUNCHER, "run", *where, *accel, "--config", config, "--workdir", workdir,
           "--", *flags]]


# --------------------------------------------------------------------------
# Running commands (or printing them).


def parse_gcloud_version(version_json: str) -> tuple[int, ...] | None:
  """``gcloud version --format=json`` -> (major, minor, patch), or None."""
  import json
  try:
    text = json.loads(version_json).get("Google Cloud SDK", "")
  except (ValueError, AttributeError):
    return None
  match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(text).strip())
  return tuple(int(g) for g in match.groups()) if match else None


class Runner:
  """Runs commands; with dry_run, prints them shell-quoted instead."""

  def __init__(self, dry_run: bool, out: TextIO | None = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def note(self, text: str) -> None:
    for line in text.splitlines():
      print(f"# {line}", file=self.out if self.dry_run else sys.stderr,
            flush=True)

  _gcloud_checked = False

  def _check_gcloud(self, cmd: Sequence[str]) -> None:
    """Before the first real gcloud call: refuse a gcloud older than
    MIN_GCLOUD_VERSION (one line naming both versions)."""
    if self.dry_run or cmd[:1] != ["gcloud"] or self._gcloud_checked:
      return
    self._gcloud_checked = True
    try:
      done = subprocess.run(["gcloud", "version", "--format=json"], capture_output=True,
                            text=True)
    except FileNotFoundError:
      raise LaunchError("gcloud not found: install it "
                        "(https://cloud.google.com/sdk/docs/install)") from None
    version = parse_gcloud_version(done.stdout) if done.returncode == 0 else None
    if version is None:
      raise LaunchError(f"`gcloud version --format=json` failed (exit {done.returncode}) or "
                        f"named no Google Cloud SDK version: {done.stderr.strip()[:200]}")
    if version < MIN_GCLOUD_VERSION:
      raise LaunchError(
          f"gcloud {'.'.join(map(str, version))} is older than "
          f"{'.'.join(map(str, MIN_GCLOUD_VERSION))}, the oldest this launcher accepts "
          "(older ones can report success although a worker failed): gcloud components "
          "update")

  def run(self, cmd: Sequence[str]) -> None:
    if self.dry_run:
      print(shlex.join(cmd), file=self.out, flush=True)
      return
    self._check_gcloud(cmd)
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
    self._check_gcloud(cmd)
    try:
      done = subprocess.run(list(cmd), capture_output=True, text=True)
    except FileNotFoundError:
      raise LaunchError(f"{cmd[0]} not found") from None
    return done.returncode, done.stdout, done.stderr

  def sleep(self, seconds: float) -> None:
    time.sleep(seconds)

  def now(self) -> float:
    return time.time()


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
  queued = ", queued resource" if getattr(args, "queued", False) else ""
  runner.note(f"TPU {args.name} ({where}): {accel.describe()}; runtime "
              f"{version}; {spot}{queued}")
  return accel


def _validate_run(args: argparse.Namespace, accel: Accelerator | None,
                  runner: Runner | None = None) -> None:
  config_file = REPO_ROOT / args.config.split(":", 1)[0]
  if not config_file.is_file():
    configs = ", ".join(sorted(p.relative_to(REPO_ROOT).as_posix()
                               for p in (REPO_ROOT / "configs").glob("*.py")))
    raise ValueError(f"--config {args.config!r}: no such file in {REPO_ROOT} "
                     f"(a path relative to the repository root, with its :ARG if it "
                     f"takes one: {configs}; e.g. configs/paper.py:dataset=cifar10,method=hcl)")
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
  _remote_words(train_command(args))   # quotes etc. before any gcloud call
  note = runner.note if runner else (lambda text: None)
  if args.skip_config_check:
    note("config not checked here (--skip-config-check)")
    return
  overrides = ([f"--config.data_dir={args.data_dir}"] if args.data_dir else []
               ) + list(args.extra)
  devices = accel.devices if accel else 1
  check_training_config(args.config, overrides, devices)
  note(" ".join(["config", args.config, *args.extra, "checked"]) +
              (f" for {devices} devices" if accel else
               " (pass --accelerator-type to check the batch split too)"))


INTERNAL_IP_NOTE = ("--internal-ip: the workers have no external IP; setup needs Cloud NAT "
                    "on their subnetwork's region to reach PyPI, and the run needs Private "
                    "Google Access (or NAT) for gs://")


def cmd_create(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  if args.internal_ip:
    runner.note(INTERNAL_IP_NOTE)
  for cmd in create_commands(args):
    runner.run(cmd)


def _prepare_setup(runner: Runner, args: argparse.Namespace) -> None:
  args.release = release_name(args.ref, runner.now())
  runner.note(f"ship git {args.ref} to every worker as release "
              f"{args.release}, install with jax[tpu]=={jax_version()}")
  _check_clean_tree(runner)


def cmd_setup(runner: Runner, args: argparse.Namespace) -> None:
  _header(runner, args)
  _prepare_setup(runner, args)
  for cmd in setup_commands(args):
    runner.run(cmd)


def cmd_run(runner: Runner, args: argparse.Namespace) -> None:
  accel = _header(runner, args)
  _validate_run(args, accel, runner)
  runner.note(f"every worker runs, detached, in {REMOTE_CURRENT} (log "
              f"{REMOTE_LOG}, copied to {_logs_destination(args.workdir)}/): "
              f"{_remote_words(train_command(args))}")
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


class _Watch:
  """The state machine behind ``watch`` (one instance per invocation)."""

  def __init__(self, runner: Runner, args: argparse.Namespace):
    self.runner, self.args = runner, args
    self.ready = "ACTIVE" if args.queued else "READY"
    self.dead = _DEAD_QUEUED_STATES if args.queued else _DEAD_NODE_STATES
    self.pending: list[str] = []   # steps still to do: delete create setup run
    self.failures = 0              # consecutive failed attempts
    self.recoveries = 0

  def log(self, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.runner.now()))
    self.runner.note(f"{stamp} watch {self.args.name}: {text}")

  def state(self) -> tuple[bool | None, str]:
    """(exists, state); exists is None when describe itself failed."""
    code, out, err = self.runner.capture(describe_state_command(self.args))
    if code == 0:
      return True, out.strip()
    if "NOT_FOUND" in err.upper().replace(" ", "_"):
      return False, ""
    self.log(f"describe failed (exit {code}), will poll again: {err.strip()}")
    return None, ""

  def finished(self) -> bool:
    """Whether WORKDIR/results.json exists. Only gcloud's "matched no
    objects" means "not yet"; any other failure (permissions, a wrong
    bucket, a network error) is reported, since read as "not finished" it
    would keep a finished run's TPU paid for without a word."""
    if not self.args.workdir.startswith("gs://"):
      return False
    code, _, err = self.runner.capture(results_command(self.args))
    if code == 0:
      return True
    if "matched no objects" not in err and "NOT_FOUND" not in err.upper().replace(" ", "_"):
      self.log(f"gcloud storage ls {self.args.workdir}/results.json failed (exit {code}), "
               f"cannot tell whether the run finished: {' '.join(err.split())[:300]}")
    return False

  def step(self, name: str) -> None:
    commands = {"delete": delete_commands, "create": create_commands,
                "setup": setup_commands, "run": run_commands}[name]
    if name == "setup":
      _prepare_setup(self.runner, self.args)
    for cmd in commands(self.args):
      self.runner.run(cmd)

  def plan(self, exists: bool, state: str) -> None:
    """Brings the pending steps in line with what the TPU is now."""
    if exists and state in self.dead:
      if self.pending[:1] != ["delete"]:
        self.pending = ["delete", "create", "setup", "run"]
    elif not exists:
      if self.pending[:1] != ["create"]:
        self.pending = ["create", "setup", "run"]
    elif self.pending[:1] == ["create"]:
      self.pending.pop(0)   # it exists: a create that failed late, or queued

  def sleep(self, seconds: float, deadline: float | None) -> None:
    if deadline is not None:
      seconds = max(0.0, min(seconds, deadline - self.runner.now()))
    self.runner.sleep(seconds)

  def backoff(self) -> float:
    return min(self.args.max_backoff_seconds,
               self.args.backoff_seconds * 2 ** (self.failures - 1))

  def run(self) -> None:
    args = self.args
    deadline = (parse_deadline(args.deadline, self.runner.now())
                if args.deadline else None)
    while True:
      if deadline is not None and self.runner.now() >= deadline:
        raise LaunchError(f"--deadline {args.deadline} reached: watch stops "
                          "(the TPU and the training are left as they are)")
      exists, state = self.state()
      if exists is None:
        self.sleep(args.poll_seconds, deadline)
        continue
      if not self.pending and self.finished():
        self.log(f"training finished: {args.workdir}/results.json exists")
        if args.delete_when_done and exists:
          try:   # the workers' last log copy; a dead VM has none to wait for
            self.runner.run(_ssh(args, "all", wait_script(args.grace_seconds)))
          except LaunchError as e:
            self.log(f"waiting for the workers failed, deleting anyway: {e}")
          for cmd in delete_commands(args):
            self.runner.run(cmd)
          self.log("deleted the TPU (--delete-when-done)")
        return
      healthy = exists and state not in self.dead
      if not self.pending and not healthy:
        if self.recoveries >= args.max_recoveries:
          raise LaunchError(f"TPU {args.name} is {state or 'gone'} and "
                            f"--max-recoveries {args.max_recoveries} is "
                            "used up")
        self.recoveries += 1
        self.log(f"TPU is {state or 'not found'}: recovery {self.recoveries} "
                 f"(training resumes from {args.workdir})")
      if self.pending or not healthy:
        self.plan(exists, state)
      if not self.pending:
        self.log(state)
        self.sleep(args.poll_seconds, deadline)
        continue
      if self.pending[0] in ("setup", "run") and state != self.ready:
        self.log(f"{state}: waiting for {self.ready} to {self.pending[0]}")
        self.sleep(args.poll_seconds, deadline)
        continue
      try:
        while self.pending:
          name = self.pending[0]
          self.log(f"{name} (attempt {self.failures + 1})")
          self.step(name)
          self.pending.pop(0)
          self.failures = 0
          if name in ("delete", "create") and (args.queued or name == "delete"):
            break   # poll before the next step
      except LaunchError as e:
        self.failures += 1
        delay = self.backoff()
        self.log(f"{name} failed (attempt {self.failures}), retrying in "
                 f"{delay:g} s: {e}")
        self.sleep(delay, deadline)
        continue
      self.failures = 0
      if not self.pending:
        self.log("training started")
        self.sleep(args.poll_seconds, deadline)


def cmd_watch(runner: Runner, args: argparse.Namespace) -> None:
  """Polls the TPU state; on preemption (or if it is gone) recovers it."""
  # A retried run stops what an earlier, partly failed attempt started.
  args.replace = True
  accel = _header(runner, args)
  _validate_run(args, accel, runner)
  if args.deadline:
    parse_deadline(args.deadline, runner.now())
  if runner.dry_run:
    runner.note(f"every {args.poll_seconds} s:")
    runner.capture(describe_state_command(args))
    runner.capture(results_command(args))
    runner.note("if results.json exists: done" + (
        " (wait for the workers, then delete the TPU)"
        if args.delete_when_done else ""))
    dead = _DEAD_QUEUED_STATES if args.queued else _DEAD_NODE_STATES
    runner.note(f"if the state is {' or '.join(dead)} (delete first) "
                "or the TPU is not found (no delete); each step retried "
                f"with backoff {args.backoff_seconds}-"
                f"{args.max_backoff_seconds} s:")
    _prepare_setup(runner, args)
    for cmd in (delete_commands(args) + create_commands(args) +
                setup_commands(args) + run_commands(args)):
      runner.run(cmd)
    return
  _Watch(runner, args).run()


# --------------------------------------------------------------------------
# Command line.


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
  common.add_argument("--internal-ip", action="store_true",
                      help="no external IPs: create with --internal-ips, "
                      "ssh/scp with --internal-ip (from inside the VPC). The "
                      "workers then need Cloud NAT on their subnetwork's region "
                      "to reach PyPI (setup) and Private Google Access or NAT "
                      "for gs:// (docs/launch.md)")

  accel_opt = argparse.ArgumentParser(add_help=False)
  accel_opt.add_argument("--accelerator-type", default=None,
                         help="e.g. v4-8, v4-32, v5litepod-16, v5p-8 (shows "
                         "the hosts; required by create and watch)")

  queued = argparse.ArgumentParser(add_help=False)
  queued.add_argument("--queued", action="store_true",
                      help="through a queued resource of the same name "
                      "(gcloud compute tpus queued-resources): waits for "
                      "capacity instead of failing on a stockout")
  queued.add_argument("--valid-until-duration", default=DEFAULT_QUEUE_VALID_FOR,
                      metavar="DURATION",
                      help="a queued request not provisioned within this is dropped "
                      f"(gcloud's flag; default {DEFAULT_QUEUE_VALID_FOR}, e.g. 6h, 2d); "
                      "watch then queues a new one")

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument("--runtime-version", default=None,
                      help="TPU VM software version (default by generation: "
                      "tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5 for "
                      "v5p, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e)")
  create.add_argument("--spot", action="store_true",
                      help="spot capacity: cheaper, can be preempted")
  create.add_argument("--network", default=None, help="VPC network")
  create.add_argument("--subnetwork", default=None, help="VPC subnetwork")
  create.add_argument("--service-account", default=None,
                      help="service account of the TPU VMs (it needs access "
                      "to the bucket)")
  create.add_argument("--create-arg", action="append", default=[],
                      metavar="--FLAG[=VALUE]",
                      help="one more flag for gcloud's create, verbatim, "
                      "e.g. --create-arg=--labels=team=ml (repeatable)")

  setup = argparse.ArgumentParser(add_help=False)
  setup.add_argument("--ref", default="HEAD",
                     help="git commit/branch to ship (committed tree only)")

  grace = argparse.ArgumentParser(add_help=False)
  grace.add_argument("--grace-seconds", type=positive_int_arg, default=120,
                     help="how long a training may take to checkpoint and "
                     "exit after SIGTERM (120)")

  run = argparse.ArgumentParser(add_help=False)
  run.add_argument("--config", required=True,
                   help="config file relative to the repo, with its :ARG, e.g. "
                   "configs/paper.py:dataset=cifar10,method=hcl (see configs/)")
  run.add_argument("--workdir", required=True,
                   help="gs://BUCKET/PATH: checkpoints and logs; resumed from")
  run.add_argument("--data-dir", default=None,
                   help="TFDS data_dir, e.g. gs://BUCKET/tensorflow_datasets "
                   "(passed as --config.data_dir)")
  run.add_argument("--local-workdir-ok", action="store_true",
                   help="allow a non-gs:// workdir (single host; lost on "
                   "preemption)")
  run.add_argument("--replace", action="store_true",
                   help="stop a training that runs on a worker (SIGTERM, "
                   "--grace-seconds) instead of refusing to start")
  run.add_argument("--skip-config-check", action="store_true",
                   help="don't load and check the config here first")
  run.add_argument("extra", nargs="*", metavar="-- --config.KEY=VALUE",
                   help="more flags for hcl_jax.main, after --")

  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def add(name: str, parents: list, help_text: str):
    return sub.add_parser(name, parents=[common] + parents, help=help_text,
                          description=help_text)

  p = add("create", [accel_opt, queued, create],
          "create a TPU VM or pod slice")
  p.set_defaults(func=cmd_create, required_accel=True)
  p = add("setup", [accel_opt, setup], "ship this repo to every worker as a "
          "new release and install it with the TPU build of jax")
  p.set_defaults(func=cmd_setup)
  p = add("run", [accel_opt, grace, run],
          "start training on every worker, detached")
  p.set_defaults(func=cmd_run)
  p = add("logs", [accel_opt], "tail one worker's training log")
  p.add_argument("--worker", type=int, default=0, help="worker index (0)")
  p.add_argument("--lines", type=positive_int_arg, default=100)
  p.add_argument("--follow", action="store_true", help="keep following")
  p.set_defaults(func=cmd_logs)
  p = add("stop", [accel_opt, grace], "SIGTERM the training on every worker "
          "(it checkpoints), SIGKILL after --grace-seconds")
  p.set_defaults(func=cmd_stop)
  p = add("delete", [accel_opt, queued], "delete the TPU VM / slice (with "
          "--queued: the queued resource and its TPU)")
  p.set_defaults(func=cmd_delete)
  p = add("status", [queued], "gcloud describe the TPU (or queued resource)")
  p.set_defaults(func=cmd_status)
  p = add("watch", [accel_opt, queued, create, setup, grace, run],
          "create, set up and run; when PREEMPTED/TERMINATED or gone: "
          "delete, create, setup and run again (training resumes from "
          "--workdir); every failed step retried with backoff")
  p.add_argument("--poll-seconds", type=positive_int_arg, default=300)
  p.add_argument("--max-recoveries", type=int, default=100)
  p.add_argument("--backoff-seconds", type=positive_int_arg, default=60,
                 help="first retry delay after a failed step (doubles)")
  p.add_argument("--max-backoff-seconds", type=positive_int_arg, default=1800,
                 help="cap of the retry delay")
  p.add_argument("--deadline", default=None,
                 help="stop watching then: a duration (12h, 2d) or an ISO "
                 "time (2026-12-24T18:00Z)")
  p.add_argument("--delete-when-done", action="store_true",
                 help="when WORKDIR/results.json exists, delete the TPU")
  p.set_defaults(func=cmd_watch, required_accel=True)
  return parser


def split_trainer_flags(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, those after "--"): the latter go to
  hcl_jax.main untouched (every launcher: tpu, gke, slurm)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = build_parser()
  argv, extra = split_trainer_flags(argv)
  args = parser.parse_args(argv)
  if getattr(args, "extra", None) and not extra:
    parser.error(f"unexpected arguments {args.extra}: put flags for "
                 "hcl_jax.main after --")
  args.extra = extra
  if extra and args.command not in ("run", "watch"):
    parser.error(f"only run and watch pass arguments to hcl_jax.main, not "
                 f"{args.command}")
  for name, default in (("queued", False), ("create_arg", []), ("ref", "HEAD"),
                        ("release", None)):
    if not hasattr(args, name):
      setattr(args, name, default)
  try:
    validate_name(args.name)
    validate_zone(args.zone)
    if getattr(args, "required_accel", False) and not args.accelerator_type:
      raise ValueError(f"{args.command} needs --accelerator-type "
                       "(e.g. v4-8, v4-32, v5litepod-16, v5p-8)")
    if getattr(args, "accelerator_type", None):
      parse_accelerator_type(args.accelerator_type)
    if not re.fullmatch(r"[1-9][0-9]*[smhd]", getattr(args, "valid_until_duration", "1d")):
      raise ValueError(f"--valid-until-duration {args.valid_until_duration!r} must be a "
                       "duration such as 30m, 6h or 2d")
    for flag in args.create_arg:
      if not re.fullmatch(r"--[a-z][-a-z0-9]*(=.*)?", flag):
        raise ValueError(f"--create-arg {flag!r} must be one gcloud flag "
                         "such as --labels=team=ml")
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
