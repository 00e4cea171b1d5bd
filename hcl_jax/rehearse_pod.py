"""Rehearse a Cloud TPU pod slice on this machine, before renting one.

  python -m hcl_jax.rehearse_pod --processes 2 --devices-per-process 4 \\
      [--preempt one,all,eval] [-- --config.num_epochs=2 ...]

runs what ``launch/tpu.py run`` runs on every worker of a slice, the real
``python -m hcl_jax.main`` end to end (pre-training, checkpoints, kNN monitor,
linear readout, results.json), as N local processes joined by
``jax.distributed`` on 127.0.0.1, with the CPU devices split between them
(``--xla_force_host_platform_device_count``), and a ``gs://`` workdir served
by a real GCS API emulator on 127.0.0.1 (``hcl_jax.gcs_emulator``). The
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
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from hcl_jax import preemption
from hcl_jax.gcs_emulator import GcsEmulator

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "rehearsal"

# configs/digits.py at 8 px with a 4-channel ResNet-18: 11 steps of 128 images.
TINY_OVERRIDES = (
    "--config.image_size=8",
    "--config.batch_size=128",
    "--config.num_epochs=1",
    "--config.model.width_multiplier=0.0625",
    "--config.model.projection_hidden_dim=16",
    "--config.model.projection_dim=8",
    "--config.eval.linear_epochs=5",
    "--config.eval.knn_k=20",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=4",
    "--config.keep_checkpoints=2",
)
_STOP_RE = re.compile(r"received: checkpoint (\d+) saved, exiting")


# SIGTERM to process 1 in training / to every process in training / to
# process 1 during the final evaluation.
PREEMPT_CASES = ("one", "all", "eval")


class RehearsalError(AssertionError):
  """A check of the rehearsal failed (the message says which)."""


@dataclasses.dataclass
class Pod:
  """N processes of one hcl_jax.main run; ``logs[i]`` is process i's output file."""
  procs: list[subprocess.Popen]
  logs: list[pathlib.Path]
  crash_seen: dict[int, tuple[float, int]] = dataclasses.field(default_factory=dict)

  def output(self, index: int) -> str:
    return self.logs[index].read_text(errors="replace")


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _image_size(overrides: Sequence[str]) -> int:
  size = 16  # configs/digits.py
  for flag in overrides:
    if flag.startswith("--config.image_size="):
      size = int(flag.split("=", 1)[1])
  return size


def prepare_digits(data_dir: str, overrides: Sequence[str]) -> None:
  """Builds the digits TFDS dataset once, before N processes would race to."""
  from hcl_jax.data import digits
  digits.digits_builder(data_dir, _image_size(overrides))


def start_pod(*, processes: int, devices_per_process: int, workdir: str, data_dir: str,
              overrides: Sequence[str], env: dict[str, str], cwd: str,
              log_dir: str, tag: str = "run") -> Pod:
  """Starts ``processes`` copies of ``python -m hcl_jax.main`` as one job."""
  port = _free_port()
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                               "JAX_LOCAL_DEVICE_IDS"))}
  flags = [f for f in base.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  base.update(env)
  base.update(
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count="
                                  f"{devices_per_process}"]),
      PYTHONPATH=os.pathsep.join([str(REPO_ROOT)] + [p for p in [base.get("PYTHONPATH")] if p]),
      TF_CPP_MIN_LOG_LEVEL="2",
  )
  argv = [sys.executable, "-u", "-m", "hcl_jax.main",
          "--config", str(REPO_ROOT / "configs" / "digits.py"), "--workdir", workdir,
          f"--config.data_dir={data_dir}", *overrides]
  procs, logs = [], []
  for index in range(processes):
    process_env = dict(base)
    if processes > 1:
      process_env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                         JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
    log = pathlib.Path(log_dir) / f"{tag}_process_{index}.out"
    with open(log, "wb") as out:
      procs.append(subprocess.Popen(argv, cwd=cwd, env=process_env, stdout=out,
                                    stderr=subprocess.STDOUT))
    logs.append(log)
  return Pod(procs, logs)


_CRASH_GRACE_S = 60.0
_GLOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")


def _ends_with_traceback(output: str) -> bool:
  """Whether the last thing printed is a Python traceback (its final line the
  exception). A traceback that a library merely logged (gcsfs retrying, say)
  is followed by more output and doesn't count."""
  _, marker, tail = output.rpartition("Traceback (most recent call last)")
  if not marker:
    return False
  # Frames are indented; the exception is the first line that is not. After it
  # only C++ runtime log lines (glog: "E1201 08:11:48.726519 ...") may follow.
  lines = [line for line in tail.splitlines()[1:] if line.strip()]
  for i, line in enumerate(lines):
    if not line.startswith((" ", "\t")):
      return all(_GLOG_LINE.match(rest) for rest in lines[i + 1:])
  return False


def _crashed(pod: Pod) -> list[int]:
  """Processes whose output has ended with a Python traceback for a grace
  period while they still run (JAX's exit handler can wait forever for the
  other processes)."""
  now = time.monotonic()
  crashed = []
  for index, proc in enumerate(pod.procs):
    output = pod.output(index)
    if proc.poll() is None and _ends_with_traceback(output):
      first_seen, length = pod.crash_seen.get(index, (now, len(output)))
      if length != len(output):  # printed more since: still alive
        first_seen = now
      pod.crash_seen[index] = (first_seen, len(output))
      if now - first_seen > _CRASH_GRACE_S:
        crashed.append(index)
    else:
      pod.crash_seen.pop(index, None)
  return crashed


def wait_pod(pod: Pod, *, timeout_s: float, expected: Sequence[int] = (0,)) -> list[int]:
  """Exit codes of every process. Fails fast: when one process exits with a
  code not in ``expected`` (or prints a traceback and hangs), the others
  (which would wait for it in a collective) are killed; past ``timeout_s``
  every process's stacks and output tail are in the error."""
  deadline = time.monotonic() + timeout_s
  try:
    while True:
      codes = [p.poll() for p in pod.procs]
      if all(c is not None for c in codes):
        return codes
      failed = ([i for i, c in enumerate(codes) if c is not None and c not in expected]
                or _crashed(pod))
      if failed:
        time.sleep(5)  # let the others print their side of it
        kill_pod(pod)
        raise RehearsalError(
            f"process {failed[0]} failed (exit code {codes[failed[0]]}; None: it printed a "
            "traceback and hung); the others were stopped. "
            f"Its output ends:\n{pod.output(failed[0])[-4000:]}")
      if time.monotonic() > deadline:
        raise RehearsalError(f"the run took more than {timeout_s:.0f} s.\n"
                             + stop_with_stacks(pod))
      time.sleep(0.2)
  except BaseException:
    kill_pod(pod)
    raise


def kill_pod(pod: Pod) -> None:
  for p in pod.procs:
    if p.poll() is None:
      p.kill()
  for p in pod.procs:
    p.wait()


_STACK_DUMP_WAIT_S = 3.0
_TAIL_CHARS = 4000
_STACKS_CHARS = 20000


def stop_with_stacks(pod: Pod) -> str:
  """Every process's Python stacks and output tail, then kills the pod.

  For a run past its bound: each live process gets SIGUSR1, on which
  ``hcl_jax.entry_point`` has faulthandler print every thread's stack to
  its stderr (even while the main thread waits inside C++, in a
  collective or a barrier); after a moment the processes are killed and
  the report shows, per process, its state and the end of its output.
  """
  alive = [p for p in pod.procs if p.poll() is None]
  before = [len(pod.output(index)) for index in range(len(pod.procs))]
  for p in alive:
    p.send_signal(signal.SIGUSR1)
  if alive:
    time.sleep(_STACK_DUMP_WAIT_S)
  kill_pod(pod)
  parts = []
  for index, p in enumerate(pod.procs):
    output = pod.output(index)
    if p in alive:
      parts.append(f"--- process {index} (pid {p.pid}) was still running; its output ends:\n"
                   f"{output[:before[index]][-_TAIL_CHARS:]}\n"
                   f"--- process {index}'s Python stacks (faulthandler):\n"
                   f"{output[before[index]:][:_STACKS_CHARS]}")
    else:
      parts.append(f"--- process {index} (pid {p.pid}) had exited {p.returncode}; its output "
                   f"ends:\n{output[-_TAIL_CHARS:]}")
  return "\n".join(parts)


def checkpoint_steps(gcs: GcsEmulator, prefix: str) -> list[int]:
  """Finished checkpoint steps under gs://BUCKET/<prefix>/checkpoints/."""
  names = gcs.list_objects(BUCKET, f"{prefix}/checkpoints/")
  pattern = re.compile(re.escape(prefix) + r"/checkpoints/(\d+)/commit_success\.txt$")
  return sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})


_PROGRESS_RE = re.compile(r"^step (\d+)/\d+ ", re.MULTILINE)


def _wait_for_output(pod: Pod, ready, what: str, deadline: float,
                     processes: Sequence[int] = (0,)) -> None:
  """Until ``ready(output)`` holds for each of ``processes``' outputs."""
  while not all(ready(pod.output(index)) for index in processes):
    if any(p.poll() is not None for p in pod.procs) or _crashed(pod):
      wait_pod(pod, timeout_s=60)
      raise RehearsalError(f"the run ended before {what}; nothing was preempted")
    if time.monotonic() > deadline:
      raise RehearsalError(f"no {what} within the bound.\n" + stop_with_stacks(pod))
    time.sleep(0.05)


def preempt_evaluation(pod: Pod, targets: Sequence[int], *, timeout_s: float) -> None:
  """SIGTERM to ``targets`` once every process says it evaluates; raises
  RehearsalError unless every process then exits 75 with the one line."""
  deadline = time.monotonic() + timeout_s
  # Each process's own line: process 0's progress line comes before the
  # slower processes have left training (a SIGTERM there is JAX's).
  _wait_for_output(pod, lambda text: preemption.EVALUATION_GUARDED in text, "evaluation",
                   deadline, processes=range(len(pod.procs)))
  for index in targets:
    pod.procs[index].send_signal(signal.SIGTERM)
  codes = wait_pod(pod, timeout_s=max(60.0, deadline - time.monotonic()), expected=(0, 75))
  if codes != [75] * len(codes):
    tails = "".join(f"\n--- process {i}'s output ends:\n{pod.output(i)[-_STACKS_CHARS:]}"
                    for i in range(len(pod.procs)))
    raise RehearsalError(f"exit codes after SIGTERM to {list(targets)} in evaluation: {codes} "
                         f"(want all 75){tails}")
  for index in range(len(pod.procs)):
    if not re.search(r"stopped: SIGTERM received.* during evaluation", pod.output(index)):
      raise RehearsalError(f"process {index} did not say why it stopped:\n"
                           f"{pod.output(index)[-3000:]}")


def preempt_pod(pod: Pod, gcs: GcsEmulator, prefix: str, targets: Sequence[int], *,
                timeout_s: float, after_step: int = 0) -> int:
  """SIGTERM to ``targets`` once process 0 reports a training step after
  ``after_step`` (so the train loop, and its preemption guard, are running);
  returns the step every process saved. Raises RehearsalError unless every
  process exits 75 naming the same step, and that step is in the bucket."""
  deadline = time.monotonic() + timeout_s
  _wait_for_output(pod, lambda text: [int(s) for s in _PROGRESS_RE.findall(text)
                                      if int(s) > after_step],
                   f"training step after {after_step}", deadline)
  for index in targets:
    pod.procs[index].send_signal(signal.SIGTERM)
  codes = wait_pod(pod, timeout_s=max(60.0, deadline - time.monotonic()), expected=(0, 75))
  if codes != [75] * len(codes):
    raise RehearsalError(f"exit codes after SIGTERM to {list(targets)}: {codes} (want all 75)")
  steps = []
  for index in range(len(pod.procs)):
    match = _STOP_RE.search(pod.output(index))
    if not match:
      raise RehearsalError(f"process {index} did not say which checkpoint it saved:\n"
                           f"{pod.output(index)[-3000:]}")
    steps.append(int(match.group(1)))
  if len(set(steps)) != 1:
    raise RehearsalError(f"the processes saved different steps: {steps}")
  if steps[0] not in checkpoint_steps(gcs, prefix):
    raise RehearsalError(f"step {steps[0]} is not in the bucket: {checkpoint_steps(gcs, prefix)}")
  return steps[0]


def final_loss(gcs: GcsEmulator, prefix: str) -> tuple[int, float]:
  lines = gcs.read_object(BUCKET, f"{prefix}/metrics.jsonl").decode().splitlines()
  last = json.loads(lines[-1])
  return int(last["step"]), float(last["loss"])


def check_bucket(gcs: GcsEmulator, prefix: str, processes: int) -> dict[str, int]:
  """Counts of what a finished run must have left in the bucket; raises if
  anything is missing."""
  names = [n[len(prefix) + 1:] for n in gcs.list_objects(BUCKET, prefix + "/")]
  kinds = {
      "checkpoints": [n for n in names if re.match(r"checkpoints/\d+/", n)],
      "metrics.jsonl": [n for n in names if n == "metrics.jsonl"],
      "config.json": [n for n in names if n == "config.json"],
      "config.yaml": [n for n in names if n == "config.yaml"],
      "results.json": [n for n in names if n == "results.json"],
      "tensorboard events": [n for n in names if n.startswith("events.out.tfevents.")],
  }
  for index in range(processes):
    kinds[f"logs/process_{index}.log"] = [n for n in names if n == f"logs/process_{index}.log"]
  missing = [kind for kind, found in kinds.items() if not found]
  if missing:
    raise RehearsalError(f"missing in gs://{BUCKET}/{prefix}: {missing}; found {names}")
  return {kind: len(found) for kind, found in kinds.items()}


def check_no_local_gs(scratch: str) -> None:
  strays = [str(p) for p in pathlib.Path(scratch).rglob("gs:*")]
  if strays:
    raise RehearsalError(f"a gs:// path was written to local disk: {strays}")


def run_pod(gcs: GcsEmulator, *, prefix: str, processes: int, devices_per_process: int,
            data_dir: str, overrides: Sequence[str], scratch: str, log_dir: str,
            preempt: Sequence[str] = (), timeout_s: float = 900.0,
            extra_env: dict[str, str] | None = None) -> dict:
  """One rehearsal: a run of gs://BUCKET/prefix, preempted and resumed as asked.

  ``preempt``: for each entry, "one" (SIGTERM to process 1) or "all" (to
  every process), a run is started, preempted once it trained a step past
  the previous stop, and checked (every process exits 75, all saved the same
  step); "eval": SIGTERM to process 1 once the run evaluates (every process
  must exit 75; the rerun evaluates the final checkpoint again). Then a
  last run resumes and finishes.

  Returns {"results", "final_step", "final_loss", "bucket", "stopped_at",
  "outputs"}: results.json, the last metrics line, the bucket check's
  counts, the preempted steps and each process's output of every run.
  """
  workdir = f"gs://{BUCKET}/{prefix}"
  env = {**gcs.env(), **(extra_env or {})}
  common = dict(processes=processes, devices_per_process=devices_per_process, workdir=workdir,
                data_dir=data_dir, overrides=overrides, env=env, cwd=scratch, log_dir=log_dir)
  outputs, stopped_at = [], []
  for case, which in enumerate(preempt):
    if which not in PREEMPT_CASES:
      raise ValueError(f"preempt entries must be one of {PREEMPT_CASES}; got {which!r}")
    targets = list(range(processes)) if which == "all" else [1 % processes]
    pod = start_pod(**common, tag=f"{prefix.replace('/', '_')}_preempted{case}")
    if which == "eval":
      preempt_evaluation(pod, targets, timeout_s=timeout_s)
      stopped_at.append(checkpoint_steps(gcs, prefix)[-1])
    else:
      stopped_at.append(preempt_pod(pod, gcs, prefix, targets, timeout_s=timeout_s,
                                    after_step=stopped_at[-1] if stopped_at else 0))
    outputs.append([pod.output(i) for i in range(processes)])
    if case:
      _check_resumed(outputs[-1][0], stopped_at[-2], workdir)
  pod = start_pod(**common, tag=prefix.replace("/", "_"))
  codes = wait_pod(pod, timeout_s=timeout_s)
  outputs.append([pod.output(i) for i in range(processes)])
  if codes != [0] * processes:
    raise RehearsalError(f"exit codes {codes}")
  if stopped_at:
    _check_resumed(outputs[-1][0], stopped_at[-1], workdir)
  check_no_local_gs(scratch)
  bucket = check_bucket(gcs, prefix, processes)
  step, loss = final_loss(gcs, prefix)
  results = json.loads(gcs.read_object(BUCKET, f"{prefix}/results.json"))
  return {"results": results, "final_step": step, "final_loss": loss, "bucket": bucket,
          "stopped_at": stopped_at, "outputs": outputs}


def _check_resumed(output: str, step: int, workdir: str) -> None:
  resumed = f"Resuming from checkpoint {step} in {workdir}"
  if resumed not in output:
    raise RehearsalError(f"the rerun did not say {resumed!r}:\n{output[-3000:]}")


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
          match = _STOP_RE.search(text) or re.search(r"stopped: .*", text)
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
