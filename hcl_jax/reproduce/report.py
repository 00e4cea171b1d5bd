"""The report of a table: results.json in, markdown and a PNG out (pure).

``docs/results/<table>.md`` and ``<table>.png`` compare our linear top-1 (mean
+- sample std over seeds) and kNN top-1 with the published numbers (STL-10
only; docs/reference.md), give each cell's paired difference to SimCLR (same
seed) with its 95 % t-interval, and say which readout protocol made each
number.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import statistics
from typing import Any, Mapping, Sequence

from hcl_jax.run import workdir_fs
from hcl_jax.reproduce.runner import read_results
from hcl_jax.reproduce.tables import BASELINE, CELLS, PUBLISHED, Cell, check_table

DEFAULT_OUT_DIR = "docs/results"


def collect_results(root: str | os.PathLike, table: str,
                    seeds: Sequence[int] | None = None) -> dict[str, list[dict[str, Any]]]:
  """cell name -> finished runs' results.json dicts, by seed.

  Looks in ROOT/<table>/<cell>/seed<k>: the given seeds, or every seed<k>
  folder present when ``seeds`` is None. Each dict gets "seed" (from the
  folder name when the file lacks it). Cells with no finished run map to [].
  """
  check_table(table)
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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (n - 1); nan where there are too few values."""
  mean = statistics.fmean(values) if values else math.nan
  std = statistics.stdev(values) if len(values) >= 2 else math.nan
  return mean, std


def summarize(table: str, results: Mapping[str, Sequence[Mapping[str, Any]]]
              ) -> list[CellSummary]:
  """Per cell (table order): mean and sample std of linear and kNN top-1."""
  check_table(table)
  published = PUBLISHED.get(table, {})
  summaries = []
  for cell in CELLS:
    runs = list(results.get(cell.name, ()))
    linear = mean_std([float(r["linear_top1"]) for r in runs])
    knn = mean_std([float(r["knn_top1"]) for r in runs])
    wall = sum(float(r.get("wall_time_s", 0.0)) for r in runs)
    summaries.append(CellSummary(cell, len(runs), *linear, *knn,
                                 published.get(cell.name), wall))
  return summaries


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
  check_table(table)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  md_path, png_path = out / f"{table}.md", out / f"{table}.png"
  plot_results(table, results, png_path)
  md_path.write_text(render_markdown(table, results, command, expected_seeds=expected_seeds,
                                     png_name=png_path.name, warning=warning))
  return md_path, png_path
