"""Reproduce a table of the HCL paper: every cell x seed, then a report.

  python -m hcl_jax.reproduce --table stl10 --seeds 3 --workdir workdirs/reproduce
  python -m hcl_jax.reproduce --table stl10 --seeds 3 --dry-run
  python -m hcl_jax.reproduce --table stl10 --report-only
  python -m hcl_jax.reproduce --table digits --epochs 2 -- --config.data_dir=data
  python -m hcl_jax.reproduce --table mutag     # graphs: see hcl_jax/graph/reproduce_table.py
  python -m hcl_jax.reproduce --table stl10 --seeds 3 --workdir gs://BKT/hcl \\
      --tpu-commands --zone us-central2-b -- --config.data_dir=gs://BKT/tfds

A table has six cells (the rows of the paper's STL-10 table): SimCLR;
Debiased (tau+ 0.1); Hard (tau+ 0.1) with beta 0.5, 1, 2, 6. Each cell and
seed k in 0..N-1 is one run of ``python -m hcl_jax.main`` in its own workdir
``ROOT/<table>/<cell>/seed<k>``, launched as a subprocess with explicit
``--config.seed/loss.name/loss.tau_plus/loss.beta`` flags and the table's
evaluation protocol as flags too (``PROTOCOLS``: readout, evaluation image
size, ghost-BN group size, blur kernel), so every printed command shows it. A run whose
``results.json`` exists is skipped; an interrupted one is started again with
the same workdir, and hcl_jax.main resumes it from its checkpoints.

Afterwards (and with ``--report-only``) ``docs/results/<table>.md`` and
``<table>.png`` compare our linear top-1 (mean +- sample std over seeds) and
kNN top-1 with the published numbers (STL-10 only; docs/reference.md), give
each cell's paired difference to SimCLR (same seed) with its 95 % t-interval,
and say which readout protocol made each number.

The report functions are pure (``collect_results``, ``summarize``,
``write_report``); ``plan_runs`` builds the runs without starting anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import re
import shlex
import signal
import statistics
import subprocess
import sys
from typing import Any, Mapping, Sequence

from hcl_jax import workdir_fs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ROOT = "workdirs/reproduce"
DEFAULT_OUT_DIR = "docs/results"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"

TABLES = ("stl10", "cifar10", "cifar100", "digits")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One row of a table: a loss and its hyper-parameters."""
  name: str       # workdir component
  label: str      # as in the paper's table
  method: str     # simclr | dcl | hcl: which configs/<table>_<method>.py
  loss_name: str  # config.loss.name
  tau_plus: float
  beta: float


CELLS: tuple[Cell, ...] = (
    Cell("simclr", "SimCLR", "simclr", "nt_xent", 0.0, 0.0),
    Cell("debiased", "Debiased", "dcl", "dcl", 0.1, 0.0),
    Cell("hard_beta0.5", "Hard", "hcl", "hcl", 0.1, 0.5),
    Cell("hard_beta1", "Hard", "hcl", "hcl", 0.1, 1.0),
    Cell("hard_beta2", "Hard", "hcl", "hcl", 0.1, 2.0),
    Cell("hard_beta6", "Hard", "hcl", "hcl", 0.1, 6.0),
)

# Linear readout top-1 (%) from the published code's README (docs/reference.md).
PUBLISHED: dict[str, dict[str, float]] = {
    "stl10": {"simclr": 80.15, "debiased": 84.26, "hard_beta0.5": 86.38,
              "hard_beta1": 87.44, "hard_beta2": 87.09, "hard_beta6": 83.09},
}

# --------------------------------------------------------------------------
# Compute estimates (from FLOPs, not measurements).

# XLA cost analysis of hcl_jax.models' ResNet-50 (CIFAR stem, width 1) at
# 32x32: forward 2.47 GFLOP per image (1.24 G multiply-adds), forward +
# backward 7.45 GFLOP. The projection head and the loss add < 0.1 %.
FORWARD_FLOPS = 2.47e9
TRAIN_FLOPS_PER_VIEW = 7.45e9
# (pre-training images, readout train images) of each dataset.
DATASET_SIZES = {"cifar10": (50_000, 50_000), "cifar100": (50_000, 50_000),
                 "stl10": (105_000, 5_000)}
# Dense peak FLOP/s of the compute path float32 takes by default.
ACCELERATORS = {
    "TPU v4-8": 4 * 275e12,       # 4 chips; f32 convs run as bf16 on the MXU
    "A100": 156e12,               # TF32 (JAX's default f32 precision on GPU)
    "H100 SXM": 495e12,           # TF32
}
UTILISATION = 0.30


@dataclasses.dataclass(frozen=True)
class Estimate:
  pretrain_flops: float
  readout_flops: float
  hours: dict[str, float]   # accelerator -> hours per run at UTILISATION

  @property
  def total_flops(self) -> float:
    return self.pretrain_flops + self.readout_flops


def estimate_run(dataset: str, *, epochs: int = 400, batch_size: int = 256,
                 linear_epochs: int = 100,
                 utilisation: float = UTILISATION) -> Estimate:
  """FLOPs and hours of one pre-training + linear readout run.

  Pre-training: epochs x (images // batch) x batch images x 2 views x
  TRAIN_FLOPS_PER_VIEW. Readout: linear_epochs x readout images x
  FORWARD_FLOPS (frozen encoder on augmented images). kNN monitoring is not
  counted (one pass over train + test per evaluation).
  """
  if dataset not in DATASET_SIZES:
    raise ValueError(f"dataset={dataset!r}: expected one of {sorted(DATASET_SIZES)}.")
  pretrain_images, readout_images = DATASET_SIZES[dataset]
  images_per_epoch = (pretrain_images // batch_size) * batch_size
  pretrain = epochs * images_per_epoch * 2 * TRAIN_FLOPS_PER_VIEW
  readout = linear_epochs * readout_images * FORWARD_FLOPS
  hours = {name: (pretrain + readout) / (peak * utilisation) / 3600
           for name, peak in ACCELERATORS.items()}
  return Estimate(pretrain, readout, hours)


# --------------------------------------------------------------------------
# Runs.


@dataclasses.dataclass(frozen=True)
class Run:
  table: str
  cell: Cell
  seed: int
  workdir: str
  config: str            # relative to the repository root
  argv: tuple[str, ...]  # the subprocess command
  status: str            # done | resume | new


def _check_table(table: str) -> None:
  if table not in TABLES:
    raise ValueError(f"table={table!r}: expected one of {list(TABLES)}.")


def config_path(table: str, cell: Cell) -> str:
  """configs/<table>_<method>.py; configs/digits.py for every digits cell."""
  _check_table(table)
  return "configs/digits.py" if table == "digits" else f"configs/{table}_{cell.method}.py"


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
  if (path / RESULTS_FILE).is_file():
    return "done"
  checkpoints = path / CHECKPOINT_DIR
  if checkpoints.is_dir() and any(checkpoints.iterdir()):
    return "resume"
  return "new"


# The evaluation protocol of each table, passed as explicit flags so that every
# command (and --dry-run) shows it. Paper tables: as published (configs/common.py):
# blur kernel 3, evaluation at the dataset's own size, ghost BN over 128
# images per view, the published linear readout. digits: configs/digits.py
# (16 px: blur kernel int(1.6) = 1, a no-op; whole-batch BN; the fast readout,
# which keeps the demo table cheap: --readout published for the paper's).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "stl10": {"eval.readout": "published", "eval.image_size": 96,
              "model.bn_group_size": 128, "augment.blur_kernel_size": 3},
    "cifar10": {"eval.readout": "published", "eval.image_size": 32,
                "model.bn_group_size": 128, "augment.blur_kernel_size": 3},
    "cifar100": {"eval.readout": "published", "eval.image_size": 32,
                 "model.bn_group_size": 128, "augment.blur_kernel_size": 3},
    "digits": {"eval.readout": "fast", "eval.image_size": 16,
               "model.bn_group_size": 0, "augment.blur_kernel_size": 1},
}
from hcl_jax.config_check import READOUTS  # noqa: E402  (light: no JAX)


def protocol_flags(table: str, readout: str | None = None) -> list[str]:
  """--config.* flags of the table's evaluation protocol (``readout`` overrides)."""
  _check_table(table)
  protocol = dict(PROTOCOLS[table])
  if readout is not None:
    if readout not in READOUTS:
      raise ValueError(f"readout={readout!r}: expected one of {list(READOUTS)}.")
    protocol["eval.readout"] = readout
  return [f"--config.{key}={value}" for key, value in protocol.items()]


def cell_flags(cell: Cell, seed: int) -> list[str]:
  return [f"--config.seed={seed}", f"--config.loss.name={cell.loss_name}",
          f"--config.loss.tau_plus={cell.tau_plus}", f"--config.loss.beta={cell.beta}"]


def plan_runs(table: str, *, seeds: int, root: str = DEFAULT_ROOT,
              epochs: int | None = None, extra: Sequence[str] = (),
              python: str = sys.executable, look_up_status: bool = True,
              readout: str | None = None) -> list[Run]:
  """Every cell x seed of ``table``, cell-major, with its command and status
  (read from the workdirs, local or gs://; "new" for all without
  ``look_up_status``)."""
  _check_table(table)
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f"seeds={seeds!r}: must be an int >= 1.")
  if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                             or epochs < 1):
    raise ValueError(f"epochs={epochs!r}: must be None or an int >= 1.")
  for flag in extra:
    if not flag.startswith("--"):
      raise ValueError(f"extra argument {flag!r} must be a flag for hcl_jax.main "
                       "such as --config.data_dir=/data/tfds.")
  runs = []
  for cell in CELLS:
    for seed in range(seeds):
      workdir = run_workdir(root, table, cell, seed)
      config = config_path(table, cell)
      argv = [python, "-m", "hcl_jax.main", "--config", config, "--workdir", workdir,
              *cell_flags(cell, seed), *protocol_flags(table, readout)]
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
  from hcl_jax import config_check

  checked = set()
  for run in runs:
    flags = tuple(run.argv[run.argv.index("--workdir") + 2:])
    if (run.config, flags) in checked:
      continue
    checked.add((run.config, flags))
    try:
      config_check.load_and_validate(run.config, flags)
    except ValueError as e:
      return str(e)
  return None


def _tpu_slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower().replace(".", "p")).strip("-")


def tpu_commands(run: Run, *, zone: str, accelerator_type: str = "v4-8",
                 spot: bool = False, prefix: str = "hcl") -> list[list[str]]:
  """launch/tpu.py create, setup and run for one run on its own TPU VM."""
  name = f"{prefix}-{run.table}-{_tpu_slug(run.cell.name)}-s{run.seed}"
  where = ["--name", name, "--zone", zone]
  tpu = ["python", "launch/tpu.py"]
  create = [*tpu, "create", *where, "--accelerator-type", accelerator_type]
  if spot:
    create.append("--spot")
  # run's own flags (--config, --workdir) then everything else after "--".
  train_flags = list(run.argv[run.argv.index("--workdir") + 2:])
  return [create,
          [*tpu, "setup", *where],
          [*tpu, "run", *where, "--accelerator-type", accelerator_type,
           "--config", run.config, "--workdir", run.workdir, "--", *train_flags]]


# --------------------------------------------------------------------------
# Results and the report (pure: files in, files out).


def read_results(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The run's results.json, or None when it has not finished."""
  path = workdir_fs.as_path(workdir) / RESULTS_FILE
  if not path.is_file():
    return None
  return workdir_fs.read_json(path)


def collect_results(root: str | os.PathLike, table: str,
                    seeds: Sequence[int] | None = None) -> dict[str, list[dict[str, Any]]]:
  """cell name -> finished runs' results.json dicts, by seed.

  Looks in ROOT/<table>/<cell>/seed<k>: the given seeds, or every seed<k>
  folder present when ``seeds`` is None. Each dict gets "seed" (from the
  folder name when the file lacks it). Cells with no finished run map to [].
  """
  _check_table(table)
  root = workdir_fs.as_path(root)
  collected: dict[str, list[dict[str, Any]]] = {}
  for cell in CELLS:
    cell_dir = root / table / cell.name
    if seeds is None:
      found = sorted(int(m.group(1)) for p in (cell_dir.iterdir() if cell_dir.is_dir() else ())
                     if p.is_dir() and (m := re.fullmatch(r"seed(\d+)", p.name)))
    else:
      found = sorted(seeds)
    runs = []
    for seed in found:
      results = read_results(cell_dir / f"seed{seed}")
      if results is not None:
        runs.append({**results, "seed": results.get("seed", seed)})
    collected[cell.name] = runs
  return collected


@dataclasses.dataclass(frozen=True)
class CellSummary:
  cell: Cell
  n: int
  linear_mean: float   # nan with no runs
  linear_std: float    # sample std (n - 1); nan with fewer than 2 runs
  knn_mean: float
  knn_std: float
  published: float | None
  wall_time_s: float


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = statistics.fmean(values) if values else math.nan
  std = statistics.stdev(values) if len(values) >= 2 else math.nan
  return mean, std


def summarize(table: str, results: Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> list[CellSummary]:
  """Per cell (table order): mean and sample std of linear and kNN top-1."""
  _check_table(table)
  published = PUBLISHED.get(table, {})
  summaries = []
  for cell in CELLS:
    runs = list(results.get(cell.name, ()))
    linear = _mean_std([float(r["linear_top1"]) for r in runs])
    knn = _mean_std([float(r["knn_top1"]) for r in runs])
    wall = sum(float(r.get("wall_time_s", 0.0)) for r in runs)
    summaries.append(CellSummary(cell, len(runs), *linear, *knn,
                                 published.get(cell.name), wall))
  return summaries


BASELINE = "simclr"   # the paired differences are against this cell


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """A cell minus the baseline (SimCLR), seed by seed (same init and data order).

  n: seeds finished in both; mean: mean difference (percentage points);
  low, high: its 95 % t-interval, mean -+ t(0.975, n - 1) * sd / sqrt(n)
  (nan with fewer than 2 pairs).
  """
  n: int
  mean: float
  low: float
  high: float

  @property
  def resolved(self) -> bool:
    """The interval excludes 0 (a gap these seeds resolve)."""
    return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def paired_difference(runs: Sequence[Mapping[str, Any]],
                      baseline_runs: Sequence[Mapping[str, Any]],
                      key: str = "linear_top1") -> PairedDifference:
  """``key`` of ``runs`` minus that of ``baseline_runs`` with the same seed."""
  base = {int(r["seed"]): float(r[key]) for r in baseline_runs}
  diffs = [float(r[key]) - base[int(r["seed"])] for r in runs if int(r["seed"]) in base]
  n = len(diffs)
  if n == 0:
    return PairedDifference(0, math.nan, math.nan, math.nan)
  mean = statistics.fmean(diffs)
  if n < 2:
    return PairedDifference(n, mean, math.nan, math.nan)
  from scipy import stats  # only for the t quantile
  half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
  return PairedDifference(n, mean, mean - half, mean + half)


def _readouts(runs: Sequence[Mapping[str, Any]]) -> str:
  """The readout protocol(s) of these runs' results.json ("fast?" if unrecorded)."""
  names = sorted({str(r.get("readout", "fast?")) for r in runs})
  return ", ".join(names) if names else "—"


def _diff_text(d: PairedDifference) -> str:
  if d.n == 0 or math.isnan(d.mean):
    return "—"
  if math.isnan(d.low):
    return f"{d.mean:+.2f} (n={d.n})"
  return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]{' *' if d.resolved else ''}"


def _pm(mean: float, std: float) -> str:
  if math.isnan(mean):
    return "—"
  return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _hours(seconds: float) -> str:
  return f"{seconds:,.0f} s ({seconds / 3600:.2f} h)"


def render_markdown(table: str, results: Mapping[str, Sequence[Mapping[str, Any]]],
                    command: str, *, expected_seeds: int | None = None,
                    png_name: str | None = None, warning: str | None = None) -> str:
  """The report's text (see write_report); ``warning`` goes under the title."""
  summaries = summarize(table, results)
  total_wall = sum(s.wall_time_s for s in summaries)
  lines = [
      f"# Reproduction: {table}",
      "",
      *([f"**{warning}**", ""] if warning else []),
      "Linear readout and weighted kNN top-1 (%) on the test set; ours are the mean ± "
      "sample standard deviation (n − 1) over seeds. Published: the HCL code's README "
      "(STL-10 only; — where the paper's code gives no number here).",
      "",
      "Produced by:",
      "",
      "```sh",
      command,
      "```",
      "",
      f"Total wall time (sum of the runs' `wall_time_s`): {_hours(total_wall)}.",
      "",
      "Δ columns: the cell minus SimCLR, seed by seed (the same seed gives both runs the "
      "same initialisation and data order), as the mean difference in percentage points "
      "and its 95 % t-interval over the seeds; * marks an interval that excludes 0 (a gap "
      "these seeds resolve), the others are within noise. readout: the linear-readout "
      "protocol recorded in the runs' results.json (published = image/linear.py: "
      "augmented images, network in train mode; fast = cached unaugmented features; "
      "fast? = not recorded, made before the protocol was recorded).",
      "",
      "| loss | beta | tau+ | published linear | ours linear | Δ linear vs SimCLR [95 % CI] "
      "| ours kNN | Δ kNN vs SimCLR [95 % CI] | readout | seeds |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  base = list(results.get(BASELINE, ()))
  for s in summaries:
    runs = list(results.get(s.cell.name, ()))
    published = f"{s.published:.2f}" if s.published is not None else "—"
    seeds = f"{s.n}" if expected_seeds is None else f"{s.n}/{expected_seeds}"
    if s.cell.name == BASELINE:
      d_lin = d_knn = "(baseline)"
    else:
      d_lin = _diff_text(paired_difference(runs, base, "linear_top1"))
      d_knn = _diff_text(paired_difference(runs, base, "knn_top1"))
    lines.append(f"| {s.cell.label} | {s.cell.beta:g} | {s.cell.tau_plus:g} | {published} "
                 f"| {_pm(s.linear_mean, s.linear_std)} | {d_lin} "
                 f"| {_pm(s.knn_mean, s.knn_std)} | {d_knn} | {_readouts(runs)} | {seeds} |")
  if png_name:
    lines += ["", f"![{table} linear top-1]({png_name})"]
  lines += ["", "## Runs", "",
            "| cell | seed | linear | kNN | readout | eval px | BN group | wall time (s) |",
            "|---|---|---|---|---|---|---|---|"]
  for cell in CELLS:
    for r in sorted(results.get(cell.name, ()), key=lambda r: r["seed"]):
      group = r.get("bn_group_size", "?")
      lines.append(f"| {cell.name} | {r['seed']} | {float(r['linear_top1']):.2f} | "
                   f"{float(r['knn_top1']):.2f} | {r.get('readout', 'fast?')} | "
                   f"{r.get('eval_image_size', '?')} | {'batch' if group == 0 else group} | "
                   f"{float(r.get('wall_time_s', 0.0)):,.0f} |")
  return "\n".join(lines) + "\n"


def plot_results(table: str, results: Mapping[str, Sequence[Mapping[str, Any]]],
                 path: str | os.PathLike) -> None:
  """Bar chart (PNG): ours linear ± std, ours kNN ± std, published, per cell."""
  # Figure + the Agg canvas directly: no pyplot, no global backend change.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  summaries = summarize(table, results)
  names = [f"{s.cell.label}\nβ={s.cell.beta:g} τ+={s.cell.tau_plus:g}" for s in summaries]
  x = range(len(summaries))
  width = 0.27
  fig = Figure(figsize=(14, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax, ax_diff = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
  _plot_differences(ax_diff, table, results)

  def bars(offset, values, errors, label, color):
    errs = None if all(math.isnan(e) for e in errors) else [
        0.0 if math.isnan(e) else e for e in errors]
    ax.bar([i + offset for i in x], [0.0 if math.isnan(v) else v for v in values], width,
           yerr=errs, capsize=3, label=label, color=color)

  bars(-width, [s.linear_mean for s in summaries], [s.linear_std for s in summaries],
       "ours: linear", "tab:blue")
  bars(0.0, [s.knn_mean for s in summaries], [s.knn_std for s in summaries],
       "ours: kNN", "tab:cyan")
  if any(s.published is not None for s in summaries):
    bars(width, [math.nan if s.published is None else s.published for s in summaries],
         [math.nan] * len(summaries), "published: linear", "tab:orange")
  ax.set_xticks(list(x), names, fontsize=8)
  ax.set_ylabel("top-1 (%)")
  ax.set_title(f"{table}: top-1 accuracy (mean ± std over seeds)")
  shown = [v for s in summaries for v in (s.linear_mean, s.knn_mean, s.published or math.nan)
           if not math.isnan(v)]
  if shown:
    ax.set_ylim(max(0.0, min(shown) - 10.0), min(100.0, max(shown) + 6.0))
  ax.legend(loc="upper left", ncols=3, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, format="png")


def _plot_differences(ax, table: str,
                      results: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
  """Paired differences to SimCLR (linear and kNN) with their 95 % t-intervals."""
  base = list(results.get(BASELINE, ()))
  cells = [c for c in CELLS if c.name != BASELINE]
  for offset, key, label, color in ((-0.15, "linear_top1", "linear", "tab:blue"),
                                    (0.15, "knn_top1", "kNN", "tab:cyan")):
    diffs = [paired_difference(list(results.get(c.name, ())), base, key) for c in cells]
    xs = [i + offset for i, d in enumerate(diffs) if not math.isnan(d.mean)]
    ys = [d.mean for d in diffs if not math.isnan(d.mean)]
    err = [[0.0 if math.isnan(d.low) else d.mean - d.low for d in diffs if not math.isnan(d.mean)],
           [0.0 if math.isnan(d.high) else d.high - d.mean for d in diffs
            if not math.isnan(d.mean)]]
    ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=4, color=color, label=label)
  ax.axhline(0.0, color="gray", linewidth=0.8)
  ax.set_xticks(range(len(cells)), [f"{c.label}\nβ={c.beta:g}" for c in cells], fontsize=8)
  ax.set_ylabel("top-1 minus SimCLR, same seed (points)")
  ax.set_title(f"{table}: paired difference to SimCLR, 95 % t-interval", fontsize=10)
  ax.legend(fontsize=8)


def write_report(table: str, results: Mapping[str, Sequence[Mapping[str, Any]]],
                 out_dir: str | os.PathLike, command: str, *,
                 expected_seeds: int | None = None,
                 warning: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes out_dir/<table>.md and out_dir/<table>.png; returns their paths."""
  _check_table(table)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  md_path, png_path = out / f"{table}.md", out / f"{table}.png"
  plot_results(table, results, png_path)
  md_path.write_text(render_markdown(table, results, command, expected_seeds=expected_seeds,
                                     png_name=png_path.name, warning=warning))
  return md_path, png_path


# --------------------------------------------------------------------------
# Command line.


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m hcl_jax.reproduce", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Flags after -- go to every hcl_jax.main run. See docs/reproducing.md.")
  parser.add_argument("--table", required=True, choices=TABLES)
  parser.add_argument("--seeds", type=_positive_int, default=None,
                      help="seeds 0..N-1 (default 1; --report-only: every seed found)")
  parser.add_argument("--workdir", default=DEFAULT_ROOT,
                      help=f"ROOT of the runs' workdirs (default {DEFAULT_ROOT})")
  parser.add_argument("--epochs", type=_positive_int, default=None,
                      help="override config.num_epochs (quick checks)")
  parser.add_argument("--readout", choices=READOUTS, default=None,
                      help="linear readout protocol (default: the table's: 'published' for "
                      "stl10/cifar10/cifar100, 'fast' for digits)")
  parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                      help=f"where <table>.md and <table>.png go (default {DEFAULT_OUT_DIR})")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true",
                    help="print the runs, their status and commands; train nothing")
  mode.add_argument("--report-only", action="store_true",
                    help="rebuild the report from existing results.json; train nothing")
  mode.add_argument("--tpu-commands", action="store_true",
                    help="print launch/tpu.py create/setup/run commands, one TPU VM "
                    "per unfinished run (needs --zone and a gs:// --workdir)")
  parser.add_argument("--zone", default=None, help="--tpu-commands: e.g. us-central2-b")
  parser.add_argument("--accelerator-type", default="v4-8",
                      help="--tpu-commands: TPU type (default v4-8)")
  parser.add_argument("--spot", action="store_true", help="--tpu-commands: spot TPUs")
  parser.add_argument("--tpu-prefix", default="hcl",
                      help="--tpu-commands: TPU names are PREFIX-<table>-<cell>-s<seed>")
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  extra: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  parser = build_parser()
  args = parser.parse_args(argv)
  args.extra = extra
  bad = [flag for flag in extra if not flag.startswith("--")]
  if bad:
    parser.error(f"arguments after -- must be flags for hcl_jax.main such as "
                 f"--config.data_dir=DIR; got {bad}")
  if args.tpu_commands:
    if not args.zone:
      parser.error("--tpu-commands needs --zone (e.g. us-central2-b)")
    if not args.workdir.startswith("gs://"):
      parser.error(f"--tpu-commands needs a gs:// --workdir; got {args.workdir!r}")
  return args


def _command_line(argv: Sequence[str]) -> str:
  return shlex.join(["python", "-m", "hcl_jax.reproduce", *argv])


def _print_plan(runs: Sequence[Run], out, epochs: int | None = None) -> None:
  counts = {status: sum(r.status == status for r in runs) for status in ("done", "resume", "new")}
  table = runs[0].table
  seeds = len({r.seed for r in runs})
  print(f"# table {table}: {len(CELLS)} cells x {seeds} seeds = {len(runs)} runs "
        f"({counts['done']} done: skipped, {counts['resume']} to resume, "
        f"{counts['new']} to start)", file=out)
  if table in DATASET_SIZES:
    est = estimate_run(table, epochs=epochs or 400)
    per_run = ", ".join(f"{h:.2f} h on {name}" for name, h in est.hours.items())
    print(f"# estimate from FLOPs (not measured), {epochs or 400} epochs, "
          f"{UTILISATION:.0%} of peak: "
          f"{est.total_flops / 1e15:.0f} PFLOP per run; {per_run}", file=out)
  for run in runs:
    print(f"# {run.status:6s} {run.cell.name} seed{run.seed}: {run.workdir}", file=out)
    if run.status != "done":
      print(shlex.join(run.argv), file=out)


def _run_all(runs: Sequence[Run]) -> tuple[list[Run], bool]:
  """Runs the unfinished runs in order; returns (failed runs, interrupted)."""
  failed: list[Run] = []
  child: list[subprocess.Popen] = []
  stop = {"signal": None}

  def on_signal(signum, frame):
    # Start nothing more. SIGTERM is forwarded to the training (it checkpoints
    # and exits 0); a terminal's Ctrl-C already reaches it (same process group).
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
      if stop["signal"] is not None or code == 0:
        # Exit 0 without results: the training was stopped (SIGTERM) and saved.
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


def main(argv: Sequence[str] | None = None, out=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  out = out or sys.stdout
  from hcl_jax.graph import reproduce_table as graph_tables
  if graph_tables.wants(argv):   # --table mutag, proteins, ...: InfoGraph (graph/)
    return graph_tables.main(argv, out)
  args = parse_args(argv)
  command = _command_line(argv)

  if args.report_only:
    seeds = None if args.seeds is None else list(range(args.seeds))
    results = collect_results(args.workdir, args.table, seeds)
    md, png = write_report(args.table, results, args.out_dir, command,
                           expected_seeds=args.seeds)
    print(f"wrote {md} and {png}", file=out)
    return 0

  runs = plan_runs(args.table, seeds=args.seeds or 1, root=args.workdir,
                   epochs=args.epochs, extra=args.extra, readout=args.readout,
                   look_up_status=not args.tpu_commands)  # commands only: no bucket access
  error = check_configs(runs)
  if error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.dry_run:
    _print_plan(runs, out, args.epochs)
    return 0
  if args.tpu_commands:
    print(f"# one {args.accelerator_type} TPU VM per run; delete each when its "
          "results.json is in the bucket (python launch/tpu.py delete ...)", file=out)
    for run in runs:
      for cmd in tpu_commands(run, zone=args.zone, accelerator_type=args.accelerator_type,
                              spot=args.spot, prefix=args.tpu_prefix):
        print(shlex.join(cmd), file=out)
    return 0

  failed, interrupted = _run_all(runs)
  seeds = list(range(args.seeds or 1))
  results = collect_results(args.workdir, args.table, seeds)
  finished = sum(len(r) for r in results.values())
  if not finished:
    # No table of dashes that could pass for a result.
    print(f"no run of table {args.table} has finished: no report written", file=sys.stderr)
    return 1
  warning = None
  if finished < len(runs):
    warning = (f"Incomplete: {finished} of {len(runs)} runs finished"
               + (f"; failed: {', '.join(f'{r.cell.name}/seed{r.seed}' for r in failed)}"
                  if failed else "") + ". Run the same command again to complete it.")
  md, png = write_report(args.table, results, args.out_dir, command,
                         expected_seeds=len(seeds), warning=warning)
  print(f"wrote {md} and {png}", file=out)
  if failed:
    print("failed runs: " + ", ".join(f"{r.cell.name}/seed{r.seed}" for r in failed),
          file=sys.stderr)
  return 1 if failed or interrupted else 0


if __name__ == "__main__":
  sys.exit(main())
