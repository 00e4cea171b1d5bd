"""The graph tables: ``python -m hcl_jax.reproduce --table mutag`` (and the
other seven datasets of the published graph/launch.sh).

  python -m hcl_jax.reproduce --table mutag                # 4 betas x 10 repeats
  python -m hcl_jax.reproduce --table mutag --dry-run
  python -m hcl_jax.reproduce --table mutag --report-only
  python -m hcl_jax.reproduce --table proteins --data-dir data/tu --dry-run

A table is beta in {0, 1, 2, 10} x repeats 0..R-1 (deepinfomax.py's grid,
launch.sh's ``--repeats 10``), run repeat-major as published. Repeat r is
seed r for every beta: the same data order, initial weights and SVC folds, so
each beta > 0 is compared with beta = 0 pair by pair (the published code
reshuffles for every (repeat, beta); pairing only removes noise from the
differences). Each run is ``hcl_jax.graph.train.train_and_evaluate`` in its
own workdir ``ROOT/<table>/beta<b>/repeat<r>``, all in this one process so
they share compilations. A run whose results.json exists is skipped; an
interrupted one resumes from its checkpoints when the command is run again.

Then ``docs/results/<table>.md`` and ``<table>.png``: SVC accuracy (%) mean
and sample std per beta, the epoch-0 accuracy beside it, wall time, and for
each beta > 0 the paired difference to beta = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import shlex
import sys
import time
from typing import Any, Mapping, Sequence

from hcl_jax import config_check
from hcl_jax.checks import positive_int_arg
from hcl_jax.graph.config import BETAS, DATASETS, REPEATS
from hcl_jax.reproduce.report import mean_std

DEFAULT_ROOT = "workdirs/reproduce"
DEFAULT_OUT_DIR = "docs/results"
TABLES = {name.lower().replace("-", "_"): name for name in DATASETS}


def wants(argv: Sequence[str]) -> bool:
  """Whether ``argv`` (hcl_jax.reproduce's) asks for a graph table."""
  argv = list(argv)
  argv = argv[:argv.index("--")] if "--" in argv else argv
  for i, arg in enumerate(argv):
    if arg == "--table" and i + 1 < len(argv):
      return argv[i + 1] in TABLES
    if arg.startswith("--table="):
      return arg.split("=", 1)[1] in TABLES
  return False


def config_path(table: str) -> str:
  """The table's config, as its commands name it: configs/graph.py:dataset=NAME."""
  return f"configs/graph.py:dataset={TABLES[table]}"


def load_config(table: str):
  return config_check.load(config_path(table))


@dataclasses.dataclass(frozen=True)
class Run:
  table: str
  beta: float
  repeat: int
  workdir: pathlib.Path
  status: str   # done | resume | new

  def command(self, epochs: int | None, data_dir: str | None) -> list[str]:
    argv = ["python", "-m", "hcl_jax.graph.main", "--config", config_path(self.table),
            "--workdir", str(self.workdir), f"--config.seed={self.repeat}",
            f"--config.loss.beta={self.beta:g}"]
    if epochs is not None:
      argv.append(f"--config.num_epochs={epochs}")
    if data_dir:
      argv.append(f"--config.data_dir={data_dir}")
    return argv


def run_workdir(root: str | pathlib.Path, table: str, beta: float, repeat: int) -> pathlib.Path:
  return pathlib.Path(root).absolute() / table / f"beta{beta:g}" / f"repeat{repeat}"


def _status(workdir: pathlib.Path) -> str:
  if (workdir / "results.json").is_file():
    return "done"
  checkpoints = workdir / "checkpoints"
  if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return "resume"
  return "new"


def plan_runs(table: str, *, repeats: int = REPEATS, betas: Sequence[float] = BETAS,
              root: str | pathlib.Path = DEFAULT_ROOT) -> list[Run]:
  """Repeat-major, as deepinfomax.py loops."""
  if table not in TABLES:
    raise ValueError(f"table={table!r}: expected one of {sorted(TABLES)}.")
  return [Run(table, float(b), r, wd, _status(wd))
          for r in range(repeats) for b in betas
          for wd in [run_workdir(root, table, b, r)]]


# --------------------------------------------------------------------------
# The report (pure: results in, text and PNG out).


def collect_results(runs: Sequence[Run]) -> list[dict[str, Any]]:
  found = []
  for run in runs:
    path = run.workdir / "results.json"
    if path.is_file():
      found.append({**json.loads(path.read_text()), "repeat": run.repeat, "beta": run.beta})
  return found


@dataclasses.dataclass(frozen=True)
class BetaSummary:
  beta: float
  n: int
  mean: float
  std: float          # sample std (n - 1); nan below 2 runs
  epoch0_mean: float
  epoch0_std: float
  wall_time_s: float
  diff_n: int         # repeats with both this beta and beta = 0
  diff_mean: float    # mean of (acc_beta - acc_0) over those repeats; nan for beta 0
  diff_std: float


def summarize(results: Sequence[Mapping[str, Any]], betas: Sequence[float] = BETAS
              ) -> list[BetaSummary]:
  by_beta = {float(b): {int(r["repeat"]): r for r in results if float(r["beta"]) == float(b)}
             for b in betas}
  base = by_beta.get(0.0, {})
  out = []
  for b in betas:
    runs = by_beta[float(b)]
    acc = mean_std([float(r["svc_accuracy"]) for r in runs.values()])
    e0 = mean_std([float(r["svc_accuracy_epoch0"]) for r in runs.values()])
    wall = sum(float(r.get("wall_time_s", 0.0)) for r in runs.values())
    if float(b) == 0.0:
      diff, n_diff = (math.nan, math.nan), 0
    else:
      paired = [float(runs[k]["svc_accuracy"]) - float(base[k]["svc_accuracy"])
                for k in sorted(runs) if k in base]
      diff, n_diff = mean_std(paired), len(paired)
    out.append(BetaSummary(float(b), len(runs), *acc, *e0, wall, n_diff, *diff))
  return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
  if math.isnan(mean):
    return "—"
  text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
  return f"{text} ± {std:.2f}" if not math.isnan(std) else text


def render_markdown(table: str, results: Sequence[Mapping[str, Any]], command: str, *,
                    repeats: int, betas: Sequence[float] = BETAS, epochs: int,
                    elapsed_s: float | None = None, png_name: str | None = None,
                    rebuilt: bool = False) -> str:
  summaries = summarize(results, betas)
  total = sum(s.wall_time_s for s in summaries)
  name = TABLES[table]
  complete = all(s.n == repeats for s in summaries)
  lines = [
      f"# Reproduction: InfoGraph + hard negatives (JSD_hard) on {name}",
      "",
      "SVC accuracy (%) of the frozen graph embeddings, the published protocol "
      "(10-fold stratified CV, C grid-searched by inner 5-fold CV), after "
      f"{epochs} epochs of pre-training, and of the same encoder at epoch 0 (random "
      "initialisation). Mean ± sample standard deviation (n − 1) over repeats; repeat r "
      "uses seed r for every beta (same data order, initial weights and SVC folds), and "
      "the last column is the mean ± std over repeats of the paired difference "
      "(accuracy at beta − accuracy at beta = 0 of the same repeat). tau+ = 0.5 "
      "throughout, as in every published run.",
      "",
      "Made on this machine by:",
      "",
      "```sh",
      command,
      "```",
      "",
      f"Total wall time: {total:,.0f} s ({total / 60:.1f} min), the sum of the runs' "
      "`wall_time_s`" + (f"; the command itself took {elapsed_s:,.0f} s" if elapsed_s else "")
      + ".",
      "",
  ]
  if rebuilt:
    lines[-1:-1] = ["(This page was rebuilt from the runs' results.json with `--report-only`.)",
                    ""]
  if not complete:
    lines += [f"**Partial table**: not every beta has its {repeats} repeats yet "
              "(column n); run the same command again to finish it.", ""]
  lines += [
      "| beta | n | SVC accuracy | epoch-0 accuracy | paired diff. to beta 0 | wall time (s) |",
      "|---|---|---|---|---|---|",
  ]
  for s in summaries:
    diff = "—" if s.beta == 0 else f"{_pm(s.diff_mean, s.diff_std, signed=True)} (n={s.diff_n})"
    lines.append(f"| {s.beta:g} | {s.n}/{repeats} | {_pm(s.mean, s.std)} | "
                 f"{_pm(s.epoch0_mean, s.epoch0_std)} | {diff} | {s.wall_time_s:,.0f} |")
  if png_name:
    lines += ["", f"![{name} SVC accuracy per beta]({png_name})"]
  lines += ["", "The paper shows its graph results as a bar chart only; no published "
            "figure is quoted here.", "", "## Runs", "",
            "| repeat | beta | SVC accuracy | epoch 0 | wall time (s) |", "|---|---|---|---|---|"]
  for r in sorted(results, key=lambda r: (r["repeat"], r["beta"])):
    lines.append(f"| {r['repeat']} | {float(r['beta']):g} | {float(r['svc_accuracy']):.2f} | "
                 f"{float(r['svc_accuracy_epoch0']):.2f} | {float(r['wall_time_s']):,.1f} |")
  return "\n".join(lines) + "\n"


def plot_results(table: str, results: Sequence[Mapping[str, Any]], path,
                 betas: Sequence[float] = BETAS) -> None:
  """Bars: mean ± std per beta (trained, epoch 0), dots: each repeat."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  summaries = summarize(results, betas)
  fig = Figure(figsize=(7, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  width = 0.38
  xs = list(range(len(summaries)))
  nz = lambda v: 0.0 if math.isnan(v) else v  # noqa: E731
  ax.bar([x - width / 2 for x in xs], [nz(s.mean) for s in summaries], width,
         yerr=[nz(s.std) for s in summaries], capsize=3, color="tab:blue",
         label="after training")
  ax.bar([x + width / 2 for x in xs], [nz(s.epoch0_mean) for s in summaries], width,
         yerr=[nz(s.epoch0_std) for s in summaries], capsize=3, color="tab:gray",
         label="epoch 0 (random init)")
  for x, b in zip(xs, betas):
    accs = [float(r["svc_accuracy"]) for r in results if float(r["beta"]) == float(b)]
    ax.scatter([x - width / 2] * len(accs), accs, s=9, color="black", zorder=3)
  ax.set_xticks(xs, [f"β = {s.beta:g}" for s in summaries])
  ax.set_ylabel("SVC accuracy (%)")
  ax.set_title(f"{TABLES[table]}: InfoGraph + JSD_hard (mean ± std over repeats)")
  shown = [v for s in summaries for v in (s.mean, s.epoch0_mean) if not math.isnan(v)]
  if shown:
    ax.set_ylim(max(0.0, min(shown) - 10.0), min(100.0, max(shown) + 6.0))
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, format="png")


def write_report(table: str, results, out_dir, command: str, **kw) -> tuple[pathlib.Path, ...]:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  md, png = out / f"{table}.md", out / f"{table}.png"
  plot_results(table, results, png, kw.get("betas", BETAS))
  md.write_text(render_markdown(table, results, command, png_name=png.name, **kw))
  return md, png


# --------------------------------------------------------------------------
# Command line.


def _betas(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
  if any(not v >= 0 for v in values) or 0.0 not in values:
    raise argparse.ArgumentTypeError(f"{text!r}: betas must be >= 0 and include 0")
  return values


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m hcl_jax.reproduce",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--table", required=True, choices=sorted(TABLES))
  parser.add_argument("--repeats", type=positive_int_arg, default=REPEATS)
  parser.add_argument("--betas", type=_betas, default=BETAS, help="default 0,1,2,10")
  parser.add_argument("--epochs", type=positive_int_arg, default=None,
                      help="override config.num_epochs (quick checks)")
  parser.add_argument("--data-dir", default=None,
                      help="folder with the TU files (every dataset but MUTAG)")
  parser.add_argument("--workdir", default=DEFAULT_ROOT)
  parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR)
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true", help="list the runs; train nothing")
  mode.add_argument("--report-only", action="store_true", help="rebuild the report only")
  return parser


def main(argv: Sequence[str], out=None) -> int:
  out = out or sys.stdout
  argv = list(argv)
  args = build_parser().parse_args(argv)
  # The command that trains (a report rebuilt with --report-only names it too).
  command = shlex.join(["python", "-m", "hcl_jax.reproduce",
                        *[a for a in argv if a != "--report-only"]])
  config = load_config(args.table)
  epochs = args.epochs or config.num_epochs
  runs = plan_runs(args.table, repeats=args.repeats, betas=args.betas, root=args.workdir)
  report_kw = dict(repeats=args.repeats, betas=args.betas, epochs=epochs)

  if args.dry_run:
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "resume", "new")}
    print(f"# table {args.table} ({TABLES[args.table]}): {len(args.betas)} betas x "
          f"{args.repeats} repeats = {len(runs)} runs ({counts['done']} done: skipped, "
          f"{counts['resume']} to resume, {counts['new']} to start), {epochs} epochs each",
          file=out)
    if args.table != "mutag" and not args.data_dir:
      print(f"# needs --data-dir: {TABLES[args.table]} is not bundled (only MUTAG ships "
            "with grakel)", file=out)
    for run in runs:
      print(f"# {run.status:6s} beta {run.beta:g} repeat {run.repeat}: {run.workdir}", file=out)
      if run.status != "done":
        print(shlex.join(run.command(args.epochs, args.data_dir)), file=out)
    return 0

  if not args.report_only:
    from hcl_jax.graph import train
    from hcl_jax.graph import tu_data

    start = time.time()
    dataset = tu_data.load_tu_dataset(TABLES[args.table], args.data_dir or config.data_dir
                                      or None)
    progress = "bar" if sys.stderr.isatty() else "none"
    for i, run in enumerate(runs, 1):
      if run.status == "done":
        continue
      run_config = load_config(args.table)
      run_config.seed, run_config.loss.beta = run.repeat, run.beta
      run_config.num_epochs, run_config.progress = epochs, progress
      if args.data_dir:
        run_config.data_dir = args.data_dir
      print(f"[reproduce] run {i}/{len(runs)} beta {run.beta:g} repeat {run.repeat} "
            f"({run.status}): {run.workdir}", file=sys.stderr, flush=True)
      result = train.train_and_evaluate(run_config, str(run.workdir), dataset=dataset)
      print(f"[reproduce] beta {run.beta:g} repeat {run.repeat}: SVC "
            f"{result['svc_accuracy']:.2f}% (epoch 0: {result['svc_accuracy_epoch0']:.2f}%), "
            f"{result['wall_time_s']:.0f} s; {time.time() - start:.0f} s so far",
            file=sys.stderr, flush=True)
    report_kw["elapsed_s"] = time.time() - start
  else:
    report_kw["rebuilt"] = True

  results = collect_results(runs)
  md, png = write_report(args.table, results, args.out_dir, command, **report_kw)
  print(f"wrote {md} and {png}", file=out)
  return 0
