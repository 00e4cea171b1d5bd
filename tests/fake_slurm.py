"""A fake ``srun`` and ``scontrol`` for running launch/slurm.py's batch script here.

``install(bin_dir, log)`` writes both into ``bin_dir`` (put it first on PATH).

srun (what the batch script uses of it, after SLURM's srun(1)): ``--nodes=N``
tasks, one per node, each started with the variables a task of a step sees
(``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
``SLURM_STEP_NODELIST`` = the job's ``SLURM_JOB_NODELIST``,
``SLURM_STEP_NUM_NODES``, ``SLURM_STEP_TASKS_PER_NODE``); SIGTERM and SIGINT
to srun are forwarded to every task; ``--kill-on-bad-exit=1`` kills the others
when one exits non-zero; srun exits with the highest task status. Each task's
output goes to srun's, prefixed by nothing (as srun without ``--label``).
scontrol: appends its arguments as one line to ``log``; exits 0.
Anything else srun is given is rejected (exit 2), so a script that relies on
an option this fake does not model fails here rather than passing untested.
"""

import pathlib
import sys

_SRUN = r'''#!{python}
import os, signal, subprocess, sys, time
args = sys.argv[1:]
nodes, kill_on_bad_exit = 1, False
while args and args[0].startswith("--"):
  option = args.pop(0)
  if option.startswith("--nodes="):
    nodes = int(option.split("=", 1)[1])
  elif option == "--ntasks-per-node=1":
    pass
  elif option == "--kill-on-bad-exit=1":
    kill_on_bad_exit = True
  else:
    print(f"fake srun: option {{option}} not modelled", file=sys.stderr)
    sys.exit(2)
if not args:
  print("fake srun: no command", file=sys.stderr)
  sys.exit(2)
node_list = os.environ.get("SLURM_JOB_NODELIST", "localhost")
tasks = []
for rank in range(nodes):
  env = dict(os.environ, SLURM_NTASKS=str(nodes), SLURM_PROCID=str(rank), SLURM_LOCALID="0",
             SLURM_NODEID=str(rank), SLURM_STEP_NODELIST=node_list,
             SLURM_STEP_NUM_NODES=str(nodes), SLURM_STEP_TASKS_PER_NODE=f"1(x{{nodes}})",
             SLURM_STEP_ID="0")
  tasks.append(subprocess.Popen(args, env=env))
def forward(signum, frame):
  for task in tasks:
    if task.poll() is None:
      task.send_signal(signum)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
while any(t.poll() is None for t in tasks):
  if kill_on_bad_exit and any(t.poll() not in (None, 0) for t in tasks):
    for t in tasks:
      if t.poll() is None:
        t.kill()
  time.sleep(0.05)
codes = [t.returncode for t in tasks]
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
  log.write("srun tasks exited " + " ".join(map(str, codes)) + "\n")
sys.exit(max(c if c >= 0 else 128 - c for c in codes))
'''

_SCONTROL = r'''#!/bin/sh
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
'''


def install(bin_dir: pathlib.Path) -> None:
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name, text in (("srun", _SRUN.format(python=sys.executable)), ("scontrol", _SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)


def directives(script: str) -> dict[str, str]:
  """``#SBATCH --key=value`` lines -> {key: value} (``--flag`` -> "")."""
  found = {}
  for line in script.splitlines():
    if line.startswith("#SBATCH "):
      option = line[len("#SBATCH "):].strip()
      key, _, value = option.partition("=")
      found[key] = value
  return found
