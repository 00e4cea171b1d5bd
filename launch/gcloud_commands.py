"""The gcloud commands of ``launch/tpu.py``, and the runner that calls them.

The ``*_commands`` functions are pure functions of the parsed arguments
(argv lists: what the tests check against gcloud's grammar,
tests/fake_gcloud.py); ``Runner`` runs them, or prints them with
``--dry-run``, after checking gcloud's version once. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Sequence, TextIO

from hcl_jax.run.files import RESULTS_JSON
from launch.common import REPO_ROOT, LaunchError
from launch.topology import parse_accelerator_type
from launch.worker_scripts import (REMOTE_LOG, jax_version, preflight_script, release_name,
                                   remote_tarball, run_script, setup_script, stop_script)

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


def ssh(args: argparse.Namespace, worker: str, script: str) -> list[str]:
  return _gcloud_tpu("ssh", args, f"--worker={worker}", *_connect(args),
                     "--command", script)


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


def setup_commands(args: argparse.Namespace) -> list[list[str]]:
  tarball = _local_tarball(args)
  return [
      ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz",
       f"--output={tarball}", args.ref],
      # gcloud: scp [[USER@]INSTANCE:]SRC ... [[USER@]INSTANCE:]DEST
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
       f"{args.name}:{remote_tarball(args.release)}", *_where(args),
       "--worker=all", *_connect(args)],
      ssh(args, "all", setup_script(jax_version(), args.release)),
  ]


def run_commands(args: argparse.Namespace) -> list[list[str]]:
  return [ssh(args, "all", preflight_script(args)),
          ssh(args, "all", run_script(args))]


def logs_commands(args: argparse.Namespace) -> list[list[str]]:
  follow = " -F" if args.follow else ""
  return [ssh(args, str(args.worker),
              f'tail -n {args.lines}{follow} "{REMOTE_LOG}"')]


def stop_commands(args: argparse.Namespace) -> list[list[str]]:
  return [ssh(args, "all", stop_script(args.grace_seconds))]


def delete_commands(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:   # --force: its node too
    return [_gcloud_queued("delete", args, "--force", "--quiet")]
  return [_gcloud_tpu("delete", args, "--quiet")]


def describe_state_command(args: argparse.Namespace) -> list[str]:
  if args.queued:
    return _gcloud_queued("describe", args, "--format=value(state.state)")
  return _gcloud_tpu("describe", args, "--format=value(state)")


def results_command(args: argparse.Namespace) -> list[str]:
  return ["gcloud", "storage", "ls", f"{args.workdir.rstrip('/')}/{RESULTS_JSON}",
          *([f"--project={args.project}"] if args.project else [])]


def status_commands(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:
    return [_gcloud_queued("describe", args)]
  return [_gcloud_tpu("describe", args)]


def parse_gcloud_version(version_json: str) -> tuple[int, ...] | None:
  """``gcloud version --format=json`` -> (major, minor, patch), or None."""
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


def check_clean_tree(runner: Runner) -> None:
  """Warns that uncommitted changes are not shipped (setup sends a commit)."""
  if runner.dry_run:
    return
  code, out, _ = runner.capture(["git", "-C", str(REPO_ROOT), "status",
                                 "--porcelain", "--untracked-files=no"])
  if code == 0 and out.strip():
    runner.note("warning: uncommitted changes are NOT shipped (setup sends "
                "the committed tree of --ref)")


def prepare_setup(runner: Runner, args: argparse.Namespace) -> None:
  """Before setup_commands: names the new release (``args.release``)."""
  args.release = release_name(args.ref, runner.now())
  runner.note(f"ship git {args.ref} to every worker as release "
              f"{args.release}, install with jax[tpu]=={jax_version()}")
  check_clean_tree(runner)

