"""The subcommands of ``launch/tpu.py``: create, setup, run, logs, stop,
delete, status and watch, each ``cmd_NAME(runner, args)``.

``run`` and ``watch`` first check their inputs here (``validate_run``): the
config file, the workdir, the flags for hcl_jax.main, and the config itself
loaded with the project's own parser and checks (``check_training_config``),
before any gcloud call.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

from launch import watch
from launch.common import REPO_ROOT, LaunchError, check_trainer_flags, validate_gs_path
from launch.gcloud_commands import (
    Runner, create_commands, delete_commands, logs_commands, prepare_setup, run_commands,
    setup_commands, status_commands, stop_commands)
from launch.topology import Accelerator, parse_accelerator_type
from launch.worker_scripts import (
    REMOTE_CURRENT, REMOTE_LOG, logs_destination, remote_words, train_command)


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


def header(runner: Runner, args: argparse.Namespace) -> Accelerator | None:
  """Notes which TPU (and, with --accelerator-type, its hosts); the Accelerator."""
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


def validate_run(args: argparse.Namespace, accel: Accelerator | None,
                 runner: Runner | None = None) -> None:
  """``run``'s and ``watch``'s inputs, before any gcloud call; ValueError."""
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
  check_trainer_flags(args.extra)
  remote_words(train_command(args))   # quotes etc. before any gcloud call
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
  header(runner, args)
  if args.internal_ip:
    runner.note(INTERNAL_IP_NOTE)
  for cmd in create_commands(args):
    runner.run(cmd)


def cmd_setup(runner: Runner, args: argparse.Namespace) -> None:
  header(runner, args)
  prepare_setup(runner, args)
  for cmd in setup_commands(args):
    runner.run(cmd)


def cmd_run(runner: Runner, args: argparse.Namespace) -> None:
  accel = header(runner, args)
  validate_run(args, accel, runner)
  runner.note(f"every worker runs, detached, in {REMOTE_CURRENT} (log "
              f"{REMOTE_LOG}, copied to {logs_destination(args.workdir)}/): "
              f"{remote_words(train_command(args))}")
  for cmd in run_commands(args):
    runner.run(cmd)


def cmd_logs(runner: Runner, args: argparse.Namespace) -> None:
  accel = header(runner, args)
  if args.worker < 0 or (accel and args.worker >= accel.hosts):
    hosts = accel.hosts if accel else "the number of hosts"
    raise ValueError(f"--worker {args.worker} must be in [0, {hosts})")
  for cmd in logs_commands(args):
    runner.run(cmd)


def cmd_stop(runner: Runner, args: argparse.Namespace) -> None:
  header(runner, args)
  for cmd in stop_commands(args):
    runner.run(cmd)


def cmd_delete(runner: Runner, args: argparse.Namespace) -> None:
  header(runner, args)
  for cmd in delete_commands(args):
    runner.run(cmd)


def cmd_status(runner: Runner, args: argparse.Namespace) -> None:
  for cmd in status_commands(args):
    runner.run(cmd)


def cmd_watch(runner: Runner, args: argparse.Namespace) -> None:
  """Polls the TPU state; on preemption (or if it is gone) recovers it."""
  # A retried run stops what an earlier, partly failed attempt started.
  args.replace = True
  accel = header(runner, args)
  validate_run(args, accel, runner)
  if args.deadline:
    watch.parse_deadline(args.deadline, runner.now())
  if runner.dry_run:
    watch.print_plan(runner, args)
  else:
    watch.Watch(runner, args).run()
