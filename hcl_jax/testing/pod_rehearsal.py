"""The pod rehearsal (``python -m hcl_jax.rehearse_pod``, see there): runs a
local pod (``hcl_jax.testing.pod``) against a GCS emulator, preempts it, and
checks what it leaves in the bucket.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import time
from typing import Sequence

from hcl_jax.run import preemption
from hcl_jax.testing.gcs_emulator import GcsEmulator
from hcl_jax.testing.pod import (BUCKET, PREEMPT_CASES, Pod, RehearsalError, STOP_RE, STACKS_CHARS, crashed,
                                  start_pod, stop_with_stacks, wait_pod)


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
    if any(p.poll() is not None for p in pod.procs) or crashed(pod):
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
    tails = "".join(f"\n--- process {i}'s output ends:\n{pod.output(i)[-STACKS_CHARS:]}"
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
    match = STOP_RE.search(pod.output(index))
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


