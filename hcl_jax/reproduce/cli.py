"""Command line of ``python -m hcl_jax.reproduce`` (the usage: the package's docstring)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

import hcl_jax.reproduce
from hcl_jax.config.values import positive_int_arg
from hcl_jax.config.registry import READOUTS
from hcl_jax.reproduce import graph_tables, report, runner, tables
from hcl_jax.reproduce.report import DEFAULT_OUT_DIR
from hcl_jax.reproduce.runner import DEFAULT_ROOT, Run

# The one registry of tables: every --table name and its kind. "image":
# hcl_jax.main runs (tables.py, runner.py, report.py); "graph": InfoGraph runs
# (graph_tables.py).
TABLES: dict[str, str] = {**{name: "image" for name in tables.TABLES},
                          **{name: "graph" for name in graph_tables.TABLES}}
assert len(TABLES) == len(tables.TABLES) + len(graph_tables.TABLES), "a name in both kinds"


def table_kind(argv: Sequence[str]) -> str | None:
  """The kind (``TABLES``) of the table that ``argv`` names with --table, None
  without one; an unknown name is argparse's usage error listing every table.
  Only the flags before ``--`` count (those after it go to the runs)."""
  argv = list(argv)
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(prog="python -m hcl_jax.reproduce", add_help=False)
  parser.add_argument("--table", choices=sorted(TABLES))
  return TABLES.get(parser.parse_known_args(argv)[0].table)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m hcl_jax.reproduce", description=hcl_jax.reproduce.__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Flags after -- go to every hcl_jax.main run. See docs/reproducing.md.")
  parser.add_argument("--table", required=True, choices=tables.TABLES,
                      help="an image table; the graph tables ("
                      f"{', '.join(sorted(graph_tables.TABLES))}) take other flags: "
                      "python -m hcl_jax.reproduce --table mutag --help")
  parser.add_argument("--seeds", type=positive_int_arg, default=None,
                      help="seeds 0..N-1 (default 1; --report-only: every seed found)")
  parser.add_argument("--workdir", default=DEFAULT_ROOT,
                      help=f"ROOT of the runs' workdirs (default {DEFAULT_ROOT})")
  parser.add_argument("--epochs", type=positive_int_arg, default=None,
                      help="override config.num_epochs (quick checks)")
  parser.add_argument("--readout", choices=READOUTS, default=None,
                      help="linear readout protocol (default: the config's: 'published' for "
                      "configs/paper.py, 'fast' for configs/digits.py)")
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
  print(f"# table {table}: {len(tables.CELLS)} cells x {seeds} seeds = {len(runs)} runs "
        f"({counts['done']} done: skipped, {counts['resume']} to resume, "
        f"{counts['new']} to start)", file=out)
  if table != tables.DEMO_TABLE:   # the paper config's ResNet-50 (digits: a small net)
    est = tables.estimate_run(table, epochs=epochs or 400)
    per_run = ", ".join(f"{h:.2f} h on {name}" for name, h in est.hours.items())
    print(f"# estimate from FLOPs (not measured), {epochs or 400} epochs, "
          f"{tables.UTILISATION:.0%} of peak: "
          f"{est.total_flops / 1e15:.0f} PFLOP per run; {per_run}", file=out)
  for run in runs:
    print(f"# {run.status:6s} {run.cell.name} seed{run.seed}: {run.workdir}", file=out)
    if run.status != "done":
      print(shlex.join(run.argv), file=out)


def main(argv: Sequence[str] | None = None, out=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  out = out or sys.stdout
  if table_kind(argv) == "graph":   # --table mutag, proteins, ...: InfoGraph
    return graph_tables.main(argv, out)
  args = parse_args(argv)
  command = _command_line(argv)

  if args.report_only:
    seeds = None if args.seeds is None else list(range(args.seeds))
    results = report.collect_results(args.workdir, args.table, seeds)
    md, png = report.write_report(args.table, results, args.out_dir, command,
                                  expected_seeds=args.seeds)
    print(f"wrote {md} and {png}", file=out)
    return 0

  runs = runner.plan_runs(args.table, seeds=args.seeds or 1, root=args.workdir,
                          epochs=args.epochs, extra=args.extra, readout=args.readout,
                          look_up_status=not args.tpu_commands)  # commands only: no bucket access
  error = runner.check_configs(runs)
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
      for cmd in runner.tpu_commands(run, zone=args.zone,
                                     accelerator_type=args.accelerator_type,
                                     spot=args.spot, prefix=args.tpu_prefix):
        print(shlex.join(cmd), file=out)
    return 0

  failed, interrupted = runner.run_all(runs)
  seeds = list(range(args.seeds or 1))
  results = report.collect_results(args.workdir, args.table, seeds)
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
  md, png = report.write_report(args.table, results, args.out_dir, command,
                                expected_seeds=len(seeds), warning=warning)
  print(f"wrote {md} and {png}", file=out)
  if failed:
    print("failed runs: " + ", ".join(f"{r.cell.name}/seed{r.seed}" for r in failed),
          file=sys.stderr)
  return 1 if failed or interrupted else 0

