#!/usr/bin/env python3
"""SLURM launcher: an sbatch script for N nodes x G GPUs, requeued on preemption.

  python launch/slurm.py --name run1 --nodes 2 --gpus-per-node 8 --time 24:00:00 \\
      --config configs/paper.py:dataset=cifar10,method=hcl --workdir /shared/runs/run1 \\
      [--partition P] [--account A] [--python .venv/bin/python] [--submit] \\
      [-- --config.k=v ...]

Writes ``NAME.sbatch`` (``--script``) and prints the ``sbatch`` line (runs it
with ``--submit``). The script:

* one task per node (``--ntasks-per-node=1``) driving all of the node's GPUs
  (``--gpus-per-node``); ``srun`` starts them, and ``hcl_jax.distributed``
  reads SLURM's ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_STEP_NODELIST``
  and ``SLURM_JOB_ID`` (coordinator: the first node, port
  ``SLURM_JOB_ID % 4096 + 61440``, as JAX's SLURM detection);
* ``--signal=B:TERM@SECONDS``: SLURM sends SIGTERM to the batch shell that
  long before the time limit; the shell forwards it to ``srun``, which
  forwards it to every task; the trainer saves a checkpoint and exits 75;
* exit 75 -> ``scontrol requeue $SLURM_JOB_ID`` (``--requeue`` allows it;
  ``--open-mode=append`` keeps one log): the job goes back to the queue and
  resumes from the workdir's checkpoint. Any other status is the job's.

The workdir must be on a file system every node sees (or gs://).

Not tried on a real SLURM cluster here: tests/test_slurm.py parses the
script, runs it with bash and a fake ``srun``/``scontrol``
(tests/fake_slurm.py) starting local processes, and
tests/test_cluster_rehearsal.py trains through its srun line.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))
from hcl_jax.run.files import EXIT_RETRYABLE  # noqa: E402
from launch.common import (  # noqa: E402
    check_matches, check_trainer_flags, parse_launcher_args, trainer_command)

_NAME_RE = re.compile(r"^[A-Za-z][-A-Za-z0-9_.]{0,63}$")
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d\d):(\d\d)$")


def time_limit_seconds(text: str) -> int:
  """``D-HH:MM:SS`` or ``HH:MM:SS`` -> seconds; ValueError otherwise."""
  match = _TIME_RE.fullmatch(text or "")
  if match is None:
    raise ValueError(f"--time {text!r} must be HH:MM:SS or D-HH:MM:SS (e.g. 24:00:00).")
  days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
  if minutes > 59 or seconds > 59:
    raise ValueError(f"--time {text!r}: minutes and seconds must be < 60.")
  return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def train_command(python: str, config: str, workdir: str, data_dir: str | None,
                  extra: Sequence[str]) -> list[str]:
  """The command every task runs: the project's python, from --project-dir."""
  return trainer_command(python, config, workdir, data_dir, extra)


def sbatch_script(*, name: str, nodes: int, gpus_per_node: int, time_limit: str,
                  signal_seconds: int, command: Sequence[str], project_dir: str,
                  log_dir: str, partition: str | None = None,
                  account: str | None = None, cpus_per_task: int | None = None) -> str:
  """The batch script (bash), as text."""
  limit = time_limit_seconds(time_limit)
  if not 0 < signal_seconds < limit:
    raise ValueError(f"--signal-seconds {signal_seconds} must be in (0, {limit}) (the time "
                     "limit): the save needs that long before the job is killed.")
  directives = [
      f"--job-name={name}",
      f"--nodes={nodes}",
      "--ntasks-per-node=1",
      f"--gpus-per-node={gpus_per_node}",
      f"--time={time_limit}",
      "--requeue",
      f"--signal=B:TERM@{signal_seconds}",
      "--open-mode=append",
      f"--output={log_dir.rstrip('/')}/%x-%j.out",
  ]
  if cpus_per_task:
    directives.append(f"--cpus-per-task={cpus_per_task}")
  if partition:
    directives.append(f"--partition={partition}")
  if account:
    directives.append(f"--account={account}")
  # No --kill-on-bad-exit: on SIGTERM every task saves and exits 75, one a
  # moment after another, and the first to exit must not get the slower ones
  # killed mid-save. A task that dies is seen by the others through JAX's
  # coordination service (they fail too) or hcl_jax's barriers.
  srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", *command]
  return "\n".join([
      "#!/bin/bash",
      f"# Written by launch/slurm.py: {nodes} node(s) x {gpus_per_node} GPU(s).",
      *(f"#SBATCH {d}" for d in directives),
      "",
      "set -u",
      f"cd {shlex.quote(project_dir)}",
      'echo "=== start $(date -u +%FT%TZ) job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}'
      ' on ${SLURM_JOB_NODELIST:-?} ==="',
      "# SIGTERM from --signal=B:TERM@S (before the time limit) reaches this shell",
      "# only: forward it to srun, which forwards it to every task (they save, exit 75).",
      "trap 'kill -TERM \"$SRUN_PID\" 2>/dev/null' TERM",
      f"{shlex.join(srun)} &",
      "SRUN_PID=$!",
      "# A trapped signal ends `wait` early (status 143): wait until srun is gone,",
      "# then once more for its own status, which bash keeps for a reaped child.",
      'while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID"; done',
      'wait "$SRUN_PID"',
      "CODE=$?",
      'echo "=== srun exit $CODE $(date -u +%FT%TZ) ==="',
      f'if [ "$CODE" -eq {EXIT_RETRYABLE} ]; then',
      '  echo "checkpoint saved: requeueing job ${SLURM_JOB_ID}"',
      '  scontrol requeue "$SLURM_JOB_ID"',
      "fi",
      'exit "$CODE"',
      "",
  ])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="launch/slurm.py",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--name", required=True)
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus-per-node", type=int, required=True)
  parser.add_argument("--time", required=True, help="Time limit, HH:MM:SS or D-HH:MM:SS.")
  parser.add_argument("--signal-seconds", type=int, default=300,
                      help="SIGTERM this long before the time limit (the save).")
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True,
                      help="On a file system every node sees, or gs://.")
  parser.add_argument("--data-dir")
  parser.add_argument("--python", default=".venv/bin/python",
                      help="The project's python on the nodes (relative to --project-dir).")
  parser.add_argument("--project-dir", default=str(pathlib.Path(__file__).resolve().parents[1]))
  parser.add_argument("--log-dir", default="slurm_logs")
  parser.add_argument("--cpus-per-task", type=int)
  parser.add_argument("--partition")
  parser.add_argument("--account")
  parser.add_argument("--script", help="Where to write it (default NAME.sbatch).")
  parser.add_argument("--submit", action="store_true", help="Run sbatch.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = parse_launcher_args(build_parser(), argv)
  try:
    check_matches("--name", args.name, _NAME_RE,
                  "letters, digits, - _ . (<= 64), starting with a letter.")
    if args.nodes < 1 or args.gpus_per_node < 0:
      raise ValueError(f"--nodes {args.nodes} must be >= 1 and --gpus-per-node "
                       f"{args.gpus_per_node} >= 0.")
    check_trainer_flags(extra)
    script = sbatch_script(
        name=args.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        time_limit=args.time, signal_seconds=args.signal_seconds,
        command=train_command(args.python, args.config, args.workdir, args.data_dir, extra),
        project_dir=args.project_dir, log_dir=args.log_dir, partition=args.partition,
        account=args.account, cpus_per_task=args.cpus_per_task)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  path = args.script or f"{args.name}.sbatch"
  pathlib.Path(path).write_text(script)
  sbatch = ["sbatch", path]
  print(f"# wrote {path}")
  print(shlex.join(sbatch))
  if args.submit:
    pathlib.Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    return subprocess.run(sbatch, check=False).returncode
  return 0


if __name__ == "__main__":
  sys.exit(main())
