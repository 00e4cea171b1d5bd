"""The runs of a table: their workdirs, commands and status, and running them.

Each cell and seed k in 0..N-1 is one run of ``python -m hcl_jax.main`` in its
own workdir ``ROOT/<table>/<cell>/seed<k>``, launched as a subprocess. Its
command names the config with its argument (``configs/paper.py:dataset=stl10,
method=hcl``: the dataset, the method and the evaluation protocol) and the
seed and beta as flags, so every printed command shows what the run runs. A
run whose ``results.json`` exists is skipped; an interrupted one is started
again with the same workdir, and hcl_jax.main resumes it from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
from typing import Any, Sequence

from hcl_jax.config import values as checks
from hcl_jax.config import registry
from hcl_jax.run import files
from hcl_jax.run import workdir_fs
from hcl_jax.reproduce import tables
from hcl_jax.reproduce.tables import CELLS, Cell

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_ROOT = "workdirs/reproduce"
from hcl_jax.run.files import CHECKPOINTS_DIR, RESULTS_JSON


@dataclasses.dataclass(frozen=True)
class Run:
  table: str
  cell: Cell
  seed: int
  workdir: str
  config: str            # --config: a path relative to the repository root, with its :ARG
  argv: tuple[str, ...]  # the subprocess command
  status: str            # done | resume | new

  @property
  def flags(self) -> list[str]:
    """The command's flags after --config and --workdir."""
    return list(self.argv[self.argv.index("--workdir") + 2:])


def _is_remote(path: str) -> bool:
  return "://" in path


def run_workdir(root: str, table: str, cell: Cell, seed: int) -> str:
  """ROOT/<table>/<cell>/seed<k>; absolute unless ROOT is a URL (gs://)."""
  if not _is_remote(root):
    root = os.path.abspath(root)
  return f"{root.rstrip('/')}/{table}/{cell.name}/seed{seed}"


def run_status(workdir: str) -> str:
  """done (results.json), resume (a checkpoint exists) or new; local or gs://."""
  path = workdir_fs.as_path(workdir)
  if (path / RESULTS_JSON).is_file():
    return "done"
  checkpoints = path / CHECKPOINTS_DIR
  if checkpoints.is_dir() and any(checkpoints.iterdir()):
    return "resume"
  return "new"


def read_results(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The run's results.json, or None when it has not finished."""
  path = workdir_fs.as_path(workdir) / RESULTS_JSON
  if not path.is_file():
    return None
  return workdir_fs.read_json(path)


def plan_runs(table: str, *, seeds: int, root: str = DEFAULT_ROOT,
              epochs: int | None = None, extra: Sequence[str] = (),
              python: str = sys.executable, look_up_status: bool = True,
              readout: str | None = None) -> list[Run]:
  """Every cell x seed of ``table``, cell-major, with its command and status
  (read from the workdirs, local or gs://; "new" for all without
  ``look_up_status``). ``readout`` overrides the config's readout protocol."""
  tables.check_table(table)
  checks.int_at_least("seeds", seeds, 1)
  if epochs is not None:
    checks.int_at_least("epochs", epochs, 1)
  if readout is not None and readout not in registry.READOUTS:
    raise ValueError(f"readout={readout!r}: expected one of {list(registry.READOUTS)}.")
  for flag in extra:
    if not flag.startswith("--"):
      raise ValueError(f"extra argument {flag!r} must be a flag for hcl_jax.main "
                       "such as --config.data_dir=/data/tfds.")
  runs = []
  for cell in CELLS:
    for seed in range(seeds):
      workdir = run_workdir(root, table, cell, seed)
      config, flags = tables.run_config(table, cell, seed)
      argv = [python, "-m", "hcl_jax.main", "--config", config, "--workdir", workdir, *flags]
      if readout is not None:
        argv.append(f"--config.eval.readout={readout}")
      if epochs is not None:
        argv.append(f"--config.num_epochs={epochs}")
      argv += list(extra)
      runs.append(Run(table, cell, seed, workdir, config, tuple(argv),
                      run_status(workdir) if look_up_status else "new"))
  return runs


def check_configs(runs: Sequence[Run]) -> str | None:
  """The first config mistake among the runs (one line), or None.

  Every run's config file with its flags, checked as hcl_jax.main will check
  it, before any run starts.
  """
  from hcl_jax.config import check as config_check

  checked = set()
  for run in runs:
    flags = tuple(run.flags)
    if (run.config, flags) in checked:
      continue
    checked.add((run.config, flags))
    try:
      config_check.load_and_validate(run.config, flags)
    except ValueError as e:
      return str(e)
  return None


def _launcher():
  """launch/tpu.py of the source tree (not in the wheel: TPUs launch from a checkout)."""
  if not (REPO_ROOT / "launch" / "tpu.py").is_file():
    raise ValueError(f"--tpu-commands prints launch/tpu.py commands: run it from a "
                     f"checkout of the repository (no launch/tpu.py under {REPO_ROOT}).")
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
  from launch import tpu
  return tpu


def tpu_name(run: Run, prefix: str = "hcl") -> str:
  """PREFIX-<table>-<cell>-s<seed>, as a TPU name may be spelt (hard_beta0.5: hard-beta0p5)."""
  cell = re.sub(r"[^a-z0-9]+", "-", run.cell.name.lower().replace(".", "p")).strip("-")
  return f"{prefix}-{run.table}-{cell}-s{run.seed}"


def tpu_commands(run: Run, *, zone: str, accelerator_type: str = "v4-8",
                 spot: bool = False, prefix: str = "hcl") -> list[list[str]]:
  """launch/tpu.py create, setup and run for one run on its own TPU VM."""
  return _launcher().new_tpu_commands(
      name=tpu_name(run, prefix), zone=zone, accelerator_type=accelerator_type, spot=spot,
      config=run.config, workdir=run.workdir, flags=run.flags)


def run_all(runs: Sequence[Run]) -> tuple[list[Run], bool]:
  """Runs the unfinished runs in order; returns (failed runs, interrupted)."""
  failed: list[Run] = []
  child: list[subprocess.Popen] = []
  stop = {"signal": None}

  def on_signal(signum, frame):
    # Start nothing more. SIGTERM is forwarded to the training (it checkpoints
    # and exits 75); a terminal's Ctrl-C already reaches it (same process group).
    stop["signal"] = signum
    if signum == signal.SIGTERM and child and child[-1].poll() is None:
      child[-1].send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for i, run in enumerate(runs, 1):
      if stop["signal"] is not None:
        return failed, True
      if run.status == "done":
        continue
      verb = "resuming" if run.status == "resume" else "starting"
      print(f"[reproduce] {verb} run {i}/{len(runs)}: {run.cell.name} seed{run.seed}\n"
            f"[reproduce] {shlex.join(run.argv)}", file=sys.stderr, flush=True)
      workdir_fs.as_path(run.workdir).mkdir(parents=True, exist_ok=True)
      # In a source tree the configs/ paths are relative to its root; after a
      # plain install main finds them among the shipped configs.
      cwd = REPO_ROOT if (REPO_ROOT / "configs").is_dir() else None
      proc = subprocess.Popen(list(run.argv), cwd=cwd)
      child.append(proc)
      code = proc.wait()
      if read_results(run.workdir) is not None:
        continue
      if stop["signal"] is not None or code in (0, files.EXIT_RETRYABLE, 130):
        # No results after a stop: the training saved and exited 75 (SIGTERM)
        # or 130 (Ctrl-C); 0 is what an older hcl_jax exited with after SIGTERM.
        print(f"[reproduce] {run.cell.name} seed{run.seed} stopped before the end; "
              "run the same command again to resume", file=sys.stderr, flush=True)
        return failed, True
      print(f"[reproduce] {run.cell.name} seed{run.seed} FAILED (exit {code}); "
            "going on with the next run", file=sys.stderr, flush=True)
      failed.append(run)
    return failed, False
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
