"""Local pods for tests and the rehearsal: N ``python -m hcl_jax.main``
processes joined by ``jax.distributed`` on 127.0.0.1, the CPU devices split
between them, started, waited for with a bound, and stopped with every
process's Python stacks and log tail (``stop_with_stacks``) so that a hang is
never silent. Used by ``hcl_jax.testing.pod_rehearsal`` and the tests.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Sequence


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
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
STOP_RE = re.compile(r"received: checkpoint (\d+) saved, exiting")


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


def free_port() -> int:
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
  port = free_port()
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


def crashed(pod: Pod) -> list[int]:
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
                or crashed(pod))
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
STACKS_CHARS = 20000


def stop_with_stacks(pod: Pod) -> str:
  """Every process's Python stacks and output tail, then kills the pod.

  For a run past its bound: each live process gets SIGUSR1, on which
  ``hcl_jax.run.entry_point`` has faulthandler print every thread's stack to
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
                   f"{output[before[index]:][:STACKS_CHARS]}")
    else:
      parts.append(f"--- process {index} (pid {p.pid}) had exited {p.returncode}; its output "
                   f"ends:\n{output[-_TAIL_CHARS:]}")
  return "\n".join(parts)


