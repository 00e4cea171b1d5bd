"""Rehearse a Cloud TPU pod slice on this machine, before renting one.

  python -m hcl_jax.rehearse_pod --processes 2 --devices-per-process 4 \\
      [--preempt one,all,eval] [-- --config.num_epochs=2 ...]

runs what ``launch/tpu.py run`` runs on every worker of a slice, the real
``python -m hcl_jax.main`` end to end (pre-training, checkpoints, kNN monitor,
linear readout, results.json), as N local processes joined by
``jax.distributed`` on 127.0.0.1, with the CPU devices split between them
(``--xla_force_host_platform_device_count``), and a ``gs://`` workdir served
by a real GCS API emulator on 127.0.0.1 (``hcl_jax.testing.gcs_emulator``). The
processes run in an empty scratch folder, so a workdir written to local disk
by mistake (a folder named ``gs:``) is caught.

``--preempt one,all,eval`` starts the run, sends SIGTERM to process 1 ("one")
once it reports a training step, checks that every process exits 75 having
saved the same step, starts it again (it must resume from that step), sends
SIGTERM to every process ("all") once it trained a step further, checks the
same, starts it again and sends SIGTERM to process 1 once it evaluates
("eval": every process must exit 75), and runs it a last time to the end.
Any sequence of the three works. At the end it prints the bucket's contents, results.json and
the final loss, and checks that the bucket holds checkpoints, metrics.jsonl,
config.json, results.json, TensorBoard events and each process's log.

The default config is configs/digits.py shrunk to a minute-long run
(``TINY_OVERRIDES``); arguments after ``--`` are further ``--config.*``
overrides for hcl_jax.main. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Sequence

from hcl_jax.testing.gcs_emulator import GcsEmulator
from hcl_jax.testing.pod import BUCKET, PREEMPT_CASES, RehearsalError, TINY_OVERRIDES, STOP_RE, prepare_digits
from hcl_jax.testing.pod_rehearsal import run_pod


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    extra = argv[argv.index("--") + 1:]
    argv = argv[:argv.index("--")]
  parser = argparse.ArgumentParser(prog="python -m hcl_jax.rehearse_pod",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2, help="hosts to simulate (default 2)")
  parser.add_argument("--devices-per-process", type=int, default=4,
                      help="CPU devices per process (default 4)")
  parser.add_argument("--preempt", default="",
                      help="comma-separated cases, each 'one' (SIGTERM to process 1) or 'all' "
                      "(to every process), sent once the run trained a step, or 'eval' "
                      "(to process 1 during the evaluation); the run is restarted after "
                      "each, e.g. --preempt one,all,eval")
  parser.add_argument("--timeout-s", type=float, default=900.0, help="per run (default 900)")
  parser.add_argument("--keep", default=None, help="folder to keep the processes' output in")
  args = parser.parse_args(argv)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices-per-process must be >= 1")
  bad = [f for f in extra if not f.startswith("--config.")]
  if bad:
    parser.error(f"arguments after -- must be --config.* overrides; got {bad}")
  overrides = [*TINY_OVERRIDES, *extra]
  preempt = [case for case in args.preempt.split(",") if case]
  if any(case not in PREEMPT_CASES for case in preempt):
    parser.error(f"--preempt takes {', '.join(PREEMPT_CASES)}, comma-separated; "
                 f"got {args.preempt!r}")

  scratch = tempfile.mkdtemp(prefix="hcl_jax_rehearsal_")
  log_dir = args.keep or os.path.join(scratch, "output")
  os.makedirs(log_dir, exist_ok=True)
  run_dir = os.path.join(scratch, "cwd")
  os.makedirs(run_dir)
  data_dir = os.path.join(scratch, "tfds")
  started = time.time()
  try:
    print(f"Building digits in {data_dir} ...", flush=True)
    prepare_digits(data_dir, overrides)
    with GcsEmulator() as gcs:
      gcs.create_bucket(BUCKET)
      print(f"GCS emulator (fake-gcs-server) on {gcs.url}; workdir gs://{BUCKET}/run; "
            f"{args.processes} processes x {args.devices_per_process} CPU devices"
            + "".join(f"; then SIGTERM to {'every process' if c == 'all' else 'process 1'} "
                      f"during {'evaluation' if c == 'eval' else 'training'}, and a rerun"
                      for c in preempt), flush=True)
      try:
        report = run_pod(gcs, prefix="run", processes=args.processes,
                         devices_per_process=args.devices_per_process, data_dir=data_dir,
                         overrides=overrides, scratch=run_dir, log_dir=log_dir,
                         preempt=preempt, timeout_s=args.timeout_s)
      except RehearsalError as e:
        print(f"REHEARSAL FAILED: {e}", file=sys.stderr)
        return 1
      for line in report["outputs"][-1][0].splitlines():
        if line.startswith(("Training ", "Resuming ", "Linear readout")):
          print(f"  last run, process 0| {line}")
      for case, step in enumerate(report["stopped_at"]):
        for index, text in enumerate(report["outputs"][case]):
          match = STOP_RE.search(text) or re.search(r"stopped: .*", text)
          line = text[:match.end()].splitlines()[-1]
          print(f"  run {case + 1}, process {index}| {line}")
      print(f"gs://{BUCKET}/run holds: " + ", ".join(
          f"{kind} ({n} object{'s' * (n != 1)})" for kind, n in report["bucket"].items()))
      print(f"final step {report['final_step']}, loss {report['final_loss']:.6f}")
      results = {k: v for k, v in report["results"].items() if k != "wall_time_s"}
      print("results.json: " + json.dumps(results, sort_keys=True))
      print(f"No local 'gs:' folder. Rehearsal passed in {time.time() - started:.0f} s.")
      return 0
  finally:
    if args.keep is None:
      shutil.rmtree(scratch, ignore_errors=True)
    else:
      shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
