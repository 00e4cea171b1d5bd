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

This file is the command line (its parser and ``main``); the work is in
``launch/``: ``topology`` (accelerator types: chips, hosts), ``worker_scripts``
(the shell run on every worker), ``gcloud_commands`` (gcloud's command lines and
the runner that calls them), ``watch`` (the recovery loop) and ``subcommands``
(what each subcommand does); ``common`` is shared with gke.py and slurm.py.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # hcl_jax and launch of this checkout
  sys.path.insert(0, str(REPO_ROOT))
from hcl_jax.config.values import positive_int_arg  # noqa: E402
from hcl_jax.run.files import RESULTS_JSON  # noqa: E402
from launch.common import LaunchError, parse_launcher_args  # noqa: E402
from launch.gcloud_commands import (  # noqa: E402
    DEFAULT_QUEUE_VALID_FOR, Runner, validate_name, validate_zone)
from launch.subcommands import (  # noqa: E402
    cmd_create, cmd_delete, cmd_logs, cmd_run, cmd_setup, cmd_status, cmd_stop, cmd_watch)
from launch.topology import parse_accelerator_type  # noqa: E402

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
                 help=f"when WORKDIR/{RESULTS_JSON} exists, delete the TPU")
  p.set_defaults(func=cmd_watch, required_accel=True)
  return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = build_parser()
  args, extra = parse_launcher_args(parser, argv)
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
