"""The graph tables: ``python -m hcl_jax.reproduce --table mutag`` (and the
other seven datasets of the published graph/launch.sh).

  python -m hcl_jax.reproduce --table mutag                # 5 rows x 10 repeats
  python -m hcl_jax.reproduce --table mutag --dry-run
  python -m hcl_jax.reproduce --table mutag --report-only
  python -m hcl_jax.reproduce --table proteins --data-dir data/tu --dry-run

A table's rows: plain InfoGraph (the published code's ``measure='JSD'``, the
official InfoGraph objective), then ``JSD_hard`` at beta in {0, 1, 2, 10}
(deepinfomax.py's grid; beta = 0 is the debiased objective, not plain
InfoGraph), each x repeats 0..R-1 (launch.sh's ``--repeats 10``), run
repeat-major as published; and the floor: the same encoder untrained (epoch
0), scored in every run. Repeat r is seed r for every row: the same data
order, initial weights and SVC folds, so each row is compared with JSD_hard
beta = 0 pair by pair (the published code reshuffles for every (repeat,
beta); pairing only removes noise from the differences). Each run is
``hcl_jax.graph.train.train_and_evaluate`` in its own workdir
``ROOT/<table>/<row>/repeat<r>`` (row: ``infograph``, ``beta0``, ``beta1``,
...), all in this one process so they share compilations. A run whose
results.json exists is skipped; an interrupted one resumes from its
checkpoints when the command is run again.

Then ``docs/results/<table>.md`` and ``<table>.png``: SVC accuracy (%) mean
and sample std per row, the untrained floor, wall time, and each row's
paired difference to JSD_hard beta = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Mapping, Sequence

from hcl_jax.config import check as config_check
from hcl_jax.config.values import positive_int_arg
from hcl_jax.graph.config import BETAS, DATASETS, REPEATS
from hcl_jax.reproduce.report import mean_std

DEFAULT_ROOT = "workdirs/reproduce"
DEFAULT_OUT_DIR = "docs/results"
TABLES = {name.lower().replace("-", "_"): name for name in DATASETS}


def config_path(table: str) -> str:
  """The table's config, as its commands name it: configs/graph.py:dataset=NAME."""
  return f"configs/graph.py:dataset={TABLES[table]}"


def load_config(table: str):
  return config_check.load(config_path(table))


@dataclasses.dataclass(frozen=True)
class Row:
  """One trained row of a table: a loss measure and its beta."""
  key: str        # workdir component: infograph | beta0 | beta1 | ...
  label: str      # as the report names it
  measure: str    # config.loss.measure: jsd | jsd_hard
  beta: float     # config.loss.beta


INFOGRAPH = Row("infograph", "InfoGraph (JSD)", "jsd", 0.0)
BASELINE = "beta0"   # the paired differences are against JSD_hard beta = 0


def hard_row(beta: float) -> Row:
  label = ("JSD_hard β = 0 (debiased)" if beta == 0 else f"JSD_hard β = {beta:g} (hard)")
  return Row(f"beta{beta:g}", label, "jsd_hard", float(beta))


def table_rows(betas: Sequence[float] = BETAS) -> tuple[Row, ...]:
  return (INFOGRAPH, *(hard_row(b) for b in betas))


@dataclasses.dataclass(frozen=True)
class Run:
  table: str
  row: Row
  repeat: int
  workdir: pathlib.Path
  status: str   # done | resume | new

  @property
  def beta(self) -> float:
    return self.row.beta

  def command(self, epochs: int | None, data_dir: str | None) -> list[str]:
    argv = ["python", "-m", "hcl_jax.graph.main", "--config", config_path(self.table),
            "--workdir", str(self.workdir), f"--config.seed={self.repeat}"]
    if self.row.measure != "jsd_hard":
      argv.append(f"--config.loss.measure={self.row.measure}")
    argv.append(f"--config.loss.beta={self.row.beta:g}")
    if epochs is not None:
      argv.append(f"--config.num_epochs={epochs}")
    if data_dir:
      argv.append(f"--config.data_dir={data_dir}")
    return argv


def run_workdir(root: str | pathlib.Path, table: str, row: Row, repeat: int) -> pathlib.Path:
  return pathlib.Path(root).absolute() / table / row.key / f"repeat{repeat}"


def _status(workdir: pathlib.Path) -> str:
  if (workdir / "results.json").is_file():
    return "done"
  checkpoints = workdir / "checkpoints"
  if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return "resume"
  return "new"


def plan_runs(table: str, *, repeats: int = REPEATS, betas: Sequence[float] = BETAS,
              root: str | pathlib.Path = DEFAULT_ROOT) -> list[Run]:
  """Repeat-major, as deepinfomax.py loops; InfoGraph first in each repeat."""
  if table not in TABLES:
    raise ValueError(f"table={table!r}: expected one of {sorted(TABLES)}.")
  return [Run(table, row, r, wd, _status(wd))
          for r in range(repeats) for row in table_rows(betas)
          for wd in [run_workdir(root, table, row, r)]]


# --------------------------------------------------------------------------
# The report (pure: results in, text and PNG out).


def collect_results(runs: Sequence[Run]) -> list[dict[str, Any]]:
  found = []
  for run in runs:
    path = run.workdir / "results.json"
    if path.is_file():
      found.append({**json.loads(path.read_text()), "repeat": run.repeat, "row": run.row.key,
                    "beta": run.beta})
  return found


FLOOR = "untrained encoder (epoch 0)"


@dataclasses.dataclass(frozen=True)
class RowSummary:
  label: str
  key: str            # a Row's key, or "epoch0" for the floor
  n: int
  mean: float
  std: float          # sample std (n - 1); nan below 2 runs
  wall_time_s: float
  diff_n: int         # repeats with both this row and the baseline
  diff_mean: float    # mean of (acc_row - acc_baseline) over those repeats; nan for it
  diff_std: float


def summarize(results: Sequence[Mapping[str, Any]], betas: Sequence[float] = BETAS
              ) -> list[RowSummary]:
  """The floor (each repeat's epoch-0 accuracy: it depends on the seed only),
  then every row of ``table_rows(betas)``."""
  by_row = {row.key: {int(r["repeat"]): r for r in results if r["row"] == row.key}
            for row in table_rows(betas)}
  base = {k: float(r["svc_accuracy"]) for k, r in by_row.get(BASELINE, {}).items()}
  floor: dict[int, float] = {}
  for r in results:
    floor.setdefault(int(r["repeat"]), float(r["svc_accuracy_epoch0"]))

  def summary(label, key, accs: Mapping[int, float], wall):
    if key == BASELINE:
      diff, n_diff = (math.nan, math.nan), 0
    else:
      paired = [accs[k] - base[k] for k in sorted(accs) if k in base]
      diff, n_diff = mean_std(paired), len(paired)
    return RowSummary(label, key, len(accs), *mean_std(list(accs.values())), wall, n_diff,
                      *diff)

  out = [summary(FLOOR, "epoch0", floor, math.nan)]
  for row in table_rows(betas):
    runs = by_row[row.key]
    out.append(summary(row.label, row.key,
                       {k: float(r["svc_accuracy"]) for k, r in runs.items()},
                       sum(float(r.get("wall_time_s", 0.0)) for r in runs.values())))
  return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
  if math.isnan(mean):
    return "—"
  text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
  return f"{text} ± {std:.2f}" if not math.isnan(std) else text


def render_markdown(table: str, results: Sequence[Mapping[str, Any]], command: str, *,
                    repeats: int, betas: Sequence[float] = BETAS, epochs: int,
                    elapsed_s: float | None = None, png_name: str | None = None,
                    rebuilt: bool = False, cores: int | None = None) -> str:
  summaries = summarize(results, betas)
  total = sum(s.wall_time_s for s in summaries if not math.isnan(s.wall_time_s))
  name = TABLES[table]
  complete = all(s.n == repeats for s in summaries)
  lines = [
      f"# Reproduction: InfoGraph, debiased and hard negatives (JSD_hard) on {name}",
      "",
      "SVC accuracy (%) of the frozen graph embeddings, the published protocol "
      "(10-fold stratified CV, C grid-searched by inner 5-fold CV), after "
      f"{epochs} epochs of pre-training. Mean ± sample standard deviation (n − 1) over "
      "repeats; repeat r uses seed r for every row (same data order, initial weights and "
      "SVC folds), and the paired-difference column is the mean ± std over repeats of "
      "(accuracy of the row − accuracy of JSD_hard β = 0 in the same repeat).",
      "",
      "The rows: **untrained encoder** is the same GIN at epoch 0 (random "
      "initialisation, scored in every run; it depends on the seed only), the floor "
      "that pre-training has to beat. **InfoGraph (JSD)** is plain InfoGraph, the "
      "published code's `measure='JSD'` (its deepinfomax.py: \"set measure='JSD_hard' "
      "to use hard negative sampling and measure='JSD' otherwise\"). **JSD_hard β = 0 "
      "is not plain InfoGraph**: with tau+ = 0.5 (every published run) it is the "
      "debiased objective (the positive term gains −tau+/(1 − tau+)·softplus(p), the "
      "negative term is divided by 1 − tau+), without hardening; β > 0 adds the "
      "hard-negative weights. These are the published code's four betas.",
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
  if cores:
    lines[-1:-1] = [
        "",
        f"The command could use {cores} CPU core{'s' if cores > 1 else ''} (its affinity; "
        "XLA sizes its thread pool by it). The accuracies depend on that count (float "
        "sums split differently): pin it, e.g. `taskset -c 0 python -m hcl_jax.reproduce "
        "...` for one core, to get these numbers again."]
  if rebuilt:
    lines[-1:-1] = ["(This page was rebuilt from the runs' results.json with `--report-only`.)",
                    ""]
  if not complete:
    lines += [f"**Partial table**: not every row has its {repeats} repeats yet "
              "(column n); run the same command again to finish it.", ""]
  lines += [
      "| row | n | SVC accuracy | paired diff. to JSD_hard β = 0 | wall time (s) |",
      "|---|---|---|---|---|",
  ]
  for s in summaries:
    diff = ("—" if s.key == BASELINE
            else f"{_pm(s.diff_mean, s.diff_std, signed=True)} (n={s.diff_n})")
    wall = "—" if math.isnan(s.wall_time_s) else f"{s.wall_time_s:,.0f}"
    lines.append(f"| {s.label} | {s.n}/{repeats} | {_pm(s.mean, s.std)} | {diff} | {wall} |")
  if png_name:
    lines += ["", f"![{name} SVC accuracy per row]({png_name})"]
  lines += ["", "The paper shows its graph results as a bar chart only; no published "
            "figure is quoted here.", "", "## Runs", "",
            "| repeat | row | SVC accuracy | epoch 0 | wall time (s) |", "|---|---|---|---|---|"]
  order = {row.key: i for i, row in enumerate(table_rows(betas))}
  for r in sorted(results, key=lambda r: (r["repeat"], order.get(r["row"], len(order)))):
    lines.append(f"| {r['repeat']} | {r['row']} | {float(r['svc_accuracy']):.2f} | "
                 f"{float(r['svc_accuracy_epoch0']):.2f} | {float(r['wall_time_s']):,.1f} |")
  return "\n".join(lines) + "\n"


def plot_results(table: str, results: Sequence[Mapping[str, Any]], path,
                 betas: Sequence[float] = BETAS) -> None:
  """Bars: mean ± std per row (the untrained floor in grey), dots: each repeat."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  summaries = summarize(results, betas)
  fig = Figure(figsize=(8, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  xs = list(range(len(summaries)))
  nz = lambda v: 0.0 if math.isnan(v) else v  # noqa: E731
  colors = ["tab:gray", "tab:orange"] + ["tab:blue"] * (len(summaries) - 2)
  ax.bar(xs, [nz(s.mean) for s in summaries], 0.6, yerr=[nz(s.std) for s in summaries],
         capsize=3, color=colors)
  for x, s in zip(xs, summaries):
    if s.key == "epoch0":
      accs = list({int(r["repeat"]): float(r["svc_accuracy_epoch0"]) for r in results}.values())
    else:
      accs = [float(r["svc_accuracy"]) for r in results if r["row"] == s.key]
    ax.scatter([x] * len(accs), accs, s=9, color="black", zorder=3)
  short = {"epoch0": "untrained\n(epoch 0)", INFOGRAPH.key: "InfoGraph\n(JSD)"}
  ax.set_xticks(xs, [short.get(s.key, f"JSD_hard\nβ = {s.key[4:]}") for s in summaries])
  ax.set_ylabel("SVC accuracy (%)")
  ax.set_title(f"{TABLES[table]}: mean ± std over repeats, dots: repeats")
  shown = [s.mean for s in summaries if not math.isnan(s.mean)]
  if shown:
    ax.set_ylim(max(0.0, min(shown) - 10.0), min(100.0, max(shown) + 6.0))
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
  parser.add_argument("--betas", type=_betas, default=BETAS,
                      help="the JSD_hard rows (default 0,1,2,10; must include 0, the "
                      "baseline); the InfoGraph row is always there")
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
    rows = table_rows(args.betas)
    print(f"# table {args.table} ({TABLES[args.table]}): {len(rows)} rows (InfoGraph; "
          f"JSD_hard beta {', '.join(f'{b:g}' for b in args.betas)}) x "
          f"{args.repeats} repeats = {len(runs)} runs ({counts['done']} done: skipped, "
          f"{counts['resume']} to resume, {counts['new']} to start), {epochs} epochs each",
          file=out)
    if args.table != "mutag" and not args.data_dir:
      print(f"# needs --data-dir: {TABLES[args.table]} is not bundled (only MUTAG ships "
            "with grakel)", file=out)
    for run in runs:
      print(f"# {run.status:6s} {run.row.key} repeat {run.repeat}: {run.workdir}", file=out)
      if run.status != "done":
        print(shlex.join(run.command(args.epochs, args.data_dir)), file=out)
    return 0

  if not args.report_only:
    from hcl_jax.graph import train
    from hcl_jax.run import lifecycle
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
      run_config.loss.measure = run.row.measure
      run_config.num_epochs, run_config.progress = epochs, progress
      if args.data_dir:
        run_config.data_dir = args.data_dir
      print(f"[reproduce] run {i}/{len(runs)} {run.row.key} repeat {run.repeat} "
            f"({run.status}): {run.workdir}", file=sys.stderr, flush=True)
      result = train.train_and_evaluate(run_config, str(run.workdir), dataset=dataset)
      if "stopped_at_step" in result:  # SIGTERM / Ctrl-C: saved; the same command resumes
        print(f"[reproduce] {run.row.key} repeat {run.repeat} stopped by {result['signal']} "
              f"at step {result['stopped_at_step']} (saved); run the same command to go on.",
              file=sys.stderr, flush=True)
        return lifecycle.exit_code(result)
      print(f"[reproduce] {run.row.key} repeat {run.repeat}: SVC "
            f"{result['svc_accuracy']:.2f}% (epoch 0: {result['svc_accuracy_epoch0']:.2f}%), "
            f"{result['wall_time_s']:.0f} s; {time.time() - start:.0f} s so far",
            file=sys.stderr, flush=True)
    report_kw["elapsed_s"] = time.time() - start
    report_kw["cores"] = len(os.sched_getaffinity(0))
  else:
    report_kw["rebuilt"] = True

  results = collect_results(runs)
  md, png = write_report(args.table, results, args.out_dir, command, **report_kw)
  print(f"wrote {md} and {png}", file=out)
  return 0
