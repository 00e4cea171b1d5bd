"""``launch/tpu.py watch``: keep a training going until its results exist.

Polls the TPU's state; when it is PREEMPTED/TERMINATED (a queued resource
FAILED/SUSPENDED) or gone, deletes, creates, sets up and runs again (the
training resumes from --workdir); every failed step is retried with capped
exponential backoff; stops at --deadline or when WORKDIR/results.json
exists (deleting the TPU with --delete-when-done). Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import re
import time

from hcl_jax.run.files import RESULTS_JSON
from launch.common import LaunchError
from launch.gcloud_commands import (
    Runner, create_commands, delete_commands, describe_state_command, prepare_setup,
    results_command, run_commands, setup_commands, ssh)
from launch.worker_scripts import wait_script

# TPU VM node states after which the VM must be deleted and created again,
# and the queued-resource states after which the request must be.
DEAD_NODE_STATES = ("PREEMPTED", "TERMINATED")
DEAD_QUEUED_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")


def parse_deadline(text: str, now: float) -> float:
  """``--deadline``: a duration (90m, 12h, 2d) from now, or an ISO time."""
  match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhd])", text.strip())
  if match:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return now + float(match.group(1)) * unit
  try:
    when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
  except ValueError:
    raise ValueError(f"--deadline {text!r} is neither a duration (90m, 12h, "
                     "2d) nor an ISO time (2026-12-24T18:00Z)") from None
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return when.timestamp()


class Watch:
  """The state machine behind ``watch`` (one instance per invocation)."""

  def __init__(self, runner: Runner, args: argparse.Namespace):
    self.runner, self.args = runner, args
    self.ready = "ACTIVE" if args.queued else "READY"
    self.dead = DEAD_QUEUED_STATES if args.queued else DEAD_NODE_STATES
    self.pending: list[str] = []   # steps still to do: delete create setup run
    self.failures = 0              # consecutive failed attempts
    self.recoveries = 0

  def log(self, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.runner.now()))
    self.runner.note(f"{stamp} watch {self.args.name}: {text}")

  def state(self) -> tuple[bool | None, str]:
    """(exists, state); exists is None when describe itself failed."""
    code, out, err = self.runner.capture(describe_state_command(self.args))
    if code == 0:
      return True, out.strip()
    if "NOT_FOUND" in err.upper().replace(" ", "_"):
      return False, ""
    self.log(f"describe failed (exit {code}), will poll again: {err.strip()}")
    return None, ""

  def finished(self) -> bool:
    """Whether WORKDIR/RESULTS_JSON exists. Only gcloud's "matched no
    objects" means "not yet"; any other failure (permissions, a wrong
    bucket, a network error) is reported, since read as "not finished" it
    would keep a finished run's TPU paid for without a word."""
    if not self.args.workdir.startswith("gs://"):
      return False
    code, _, err = self.runner.capture(results_command(self.args))
    if code == 0:
      return True
    if "matched no objects" not in err and "NOT_FOUND" not in err.upper().replace(" ", "_"):
      self.log(f"gcloud storage ls {self.args.workdir}/{RESULTS_JSON} failed (exit {code}), "
               f"cannot tell whether the run finished: {' '.join(err.split())[:300]}")
    return False

  def step(self, name: str) -> None:
    commands = {"delete": delete_commands, "create": create_commands,
                "setup": setup_commands, "run": run_commands}[name]
    if name == "setup":
      prepare_setup(self.runner, self.args)
    for cmd in commands(self.args):
      self.runner.run(cmd)

  def plan(self, exists: bool, state: str) -> None:
    """Brings the pending steps in line with what the TPU is now."""
    if exists and state in self.dead:
      if self.pending[:1] != ["delete"]:
        self.pending = ["delete", "create", "setup", "run"]
    elif not exists:
      if self.pending[:1] != ["create"]:
        self.pending = ["create", "setup", "run"]
    elif self.pending[:1] == ["create"]:
      self.pending.pop(0)   # it exists: a create that failed late, or queued

  def sleep(self, seconds: float, deadline: float | None) -> None:
    if deadline is not None:
      seconds = max(0.0, min(seconds, deadline - self.runner.now()))
    self.runner.sleep(seconds)

  def backoff(self) -> float:
    return min(self.args.max_backoff_seconds,
               self.args.backoff_seconds * 2 ** (self.failures - 1))

  def run(self) -> None:
    args = self.args
    deadline = (parse_deadline(args.deadline, self.runner.now())
                if args.deadline else None)
    while True:
      if deadline is not None and self.runner.now() >= deadline:
        raise LaunchError(f"--deadline {args.deadline} reached: watch stops "
                          "(the TPU and the training are left as they are)")
      exists, state = self.state()
      if exists is None:
        self.sleep(args.poll_seconds, deadline)
        continue
      if not self.pending and self.finished():
        self.log(f"training finished: {args.workdir}/{RESULTS_JSON} exists")
        if args.delete_when_done and exists:
          try:   # the workers' last log copy; a dead VM has none to wait for
            self.runner.run(ssh(args, "all", wait_script(args.grace_seconds)))
          except LaunchError as e:
            self.log(f"waiting for the workers failed, deleting anyway: {e}")
          for cmd in delete_commands(args):
            self.runner.run(cmd)
          self.log("deleted the TPU (--delete-when-done)")
        return
      healthy = exists and state not in self.dead
      if not self.pending and not healthy:
        if self.recoveries >= args.max_recoveries:
          raise LaunchError(f"TPU {args.name} is {state or 'gone'} and "
                            f"--max-recoveries {args.max_recoveries} is "
                            "used up")
        self.recoveries += 1
        self.log(f"TPU is {state or 'not found'}: recovery {self.recoveries} "
                 f"(training resumes from {args.workdir})")
      if self.pending or not healthy:
        self.plan(exists, state)
      if not self.pending:
        self.log(state)
        self.sleep(args.poll_seconds, deadline)
        continue
      if self.pending[0] in ("setup", "run") and state != self.ready:
        self.log(f"{state}: waiting for {self.ready} to {self.pending[0]}")
        self.sleep(args.poll_seconds, deadline)
        continue
      try:
        while self.pending:
          name = self.pending[0]
          self.log(f"{name} (attempt {self.failures + 1})")
          self.step(name)
          self.pending.pop(0)
          self.failures = 0
          if name in ("delete", "create") and (args.queued or name == "delete"):
            break   # poll before the next step
      except LaunchError as e:
        self.failures += 1
        delay = self.backoff()
        self.log(f"{name} failed (attempt {self.failures}), retrying in "
                 f"{delay:g} s: {e}")
        self.sleep(delay, deadline)
        continue
      self.failures = 0
      if not self.pending:
        self.log("training started")
        self.sleep(args.poll_seconds, deadline)


def print_plan(runner: Runner, args: argparse.Namespace) -> None:
  """What ``watch --dry-run`` prints: the polls, then every step's command."""
  runner.note(f"every {args.poll_seconds} s:")
  runner.capture(describe_state_command(args))
  runner.capture(results_command(args))
  runner.note(f"if {RESULTS_JSON} exists: done" + (
      " (wait for the workers, then delete the TPU)"
      if args.delete_when_done else ""))
  dead = DEAD_QUEUED_STATES if args.queued else DEAD_NODE_STATES
  runner.note(f"if the state is {' or '.join(dead)} (delete first) "
              "or the TPU is not found (no delete); each step retried "
              f"with backoff {args.backoff_seconds}-"
              f"{args.max_backoff_seconds} s:")
  prepare_setup(runner, args)
  for cmd in (delete_commands(args) + create_commands(args) +
              setup_commands(args) + run_commands(args)):
    runner.run(cmd)
