"""Fault-injection sweep of the digits run (issue 15): prints a result table.

  python benchmarks/fault_sweep.py [--out /tmp/sweep] [--exit-runs 14] [--kills 3]

Tiny runs (ResNet-18 at 1/16 width, 8px digits, batch 64, 2 epochs = 44
steps, checkpoint every 3 steps), the evaluation stubbed out except in the
exit-code runs. Each row is one fault, what the run must do, and what it did:

- kill -9 at random moments (after the first checkpoint), then a rerun: the
  final checkpoint must be bit-equal to a straight run's;
- a garbled and a truncated newest checkpoint: warning once, fall back,
  bit-equal end, no "Event loop is closed" noise;
- a full disk (a 1.5 MB tmpfs, needs root to mount), a read-only workdir
  (tmpfs remounted ro), a workdir that is a file: one line naming the path;
- two concurrent runs on one workdir: the second refuses at once naming
  the holder; the first finishes;
- changed configs on a finished run: refused, every file unchanged;
- lr = 1e38: stops at the first non-finite step, no results.json;
- SIGTERM during start-up and during evaluation: exit 75, one line;
- N complete runs with the real evaluation: every exit code 0 (a 1-in-5
  crash at exit survives N runs with probability 0.8**N: 4.4% for N = 14).

Not part of ``make test`` (about 20-40 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "image_size": 8, "batch_size": 64, "num_epochs": 2, "model.width_multiplier": 0.0625,
    "model.projection_hidden_dim": 16, "model.projection_dim": 8, "eval.linear_epochs": 2,
    "eval.knn_k": 10, "log_every_steps": 1, "checkpoint_every_steps": 3, "keep_checkpoints": 3,
}
STEPS = 44
STUB = (
    "import os, time\n"
    "from hcl_jax.evaluation import protocol as evaluate\n"
    "def fake(*a, **k):\n"
    "  time.sleep(float(os.environ.get('EVAL_SLEEP', '0')))\n"
    "  return {'linear_top1': 12.5, 'knn_top1': 25.0}\n"
    "if not os.environ.get('REAL_EVAL'):\n"
    "  evaluate.evaluate_encoder = fake\n"
    "from absl import app\n"
    "from hcl_jax import main\n"
    "app.run(main.main)\n")

rows: list[tuple[str, str, str, bool]] = []


def args_for(data_dir, workdir, **overrides):
  values = {**TINY, **overrides}
  return (["--config", os.path.join(ROOT, "configs", "digits.py"), "--workdir", workdir,
           f"--config.data_dir={data_dir}"] + [f"--config.{k}={v}" for k, v in values.items()])


def env(**extra):
  e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **extra)
  return e


def launch(data_dir, workdir, log, extra_flags=(), **kw):
  overrides = {k.replace("__", "."): v for k, v in kw.pop("overrides", {}).items()}
  f = open(log, "w")
  p = subprocess.Popen([sys.executable, "-c", STUB] + args_for(data_dir, workdir, **overrides)
                       + list(extra_flags), cwd=ROOT, env=env(**kw), stdout=f,
                       stderr=subprocess.STDOUT)
  p.log = log
  return p


def run(data_dir, workdir, log, timeout=900, **kw):
  p = launch(data_dir, workdir, log, **kw)
  try:
    rc = p.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    p.kill()
    rc = "timeout"
  return rc, open(log).read()


def steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def state_hash(workdir, step):
  """sha256 of every array of checkpoint ``step`` (not of its files: metadata has times)."""
  h = hashlib.sha256()
  import numpy as np
  import orbax.checkpoint as ocp
  import jax
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
  for leaf in jax.tree.leaves(tree):
    h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()


def snapshot(workdir):
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
    if os.path.isfile(path):
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def last_line(log):
  lines = [l for l in log.strip().splitlines() if l.strip()]
  return lines[-1][:160] if lines else ""


def record(name, expected, observed, ok):
  rows.append((name, expected, observed, bool(ok)))
  print(f"[{'ok' if ok else 'FAIL'}] {name}: {observed}", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="/tmp/hcl_fault_sweep")
  parser.add_argument("--exit-runs", type=int, default=14)
  parser.add_argument("--kills", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--reuse", action="store_true",
                      help="keep --out's data and straight run from an earlier sweep")
  args = parser.parse_args()
  random.seed(args.seed)
  out = args.out
  straight = os.path.join(out, "straight")
  data_dir = os.path.join(out, "data")
  reuse = args.reuse and os.path.exists(os.path.join(straight, "results.json"))
  if reuse:
    for name in os.listdir(out):
      if name not in ("data", "straight", "straight.log"):
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  else:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
  sys.path.insert(0, ROOT)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from hcl_jax.data import digits as digits_lib
  digits_lib.digits_builder(data_dir, 8)

  # Reference.
  if reuse:
    rc = 0
    record("straight run", "rc 0", "reused from an earlier sweep", True)
  else:
    t0 = time.time()
    rc, log = run(data_dir, straight, straight + ".log")
    record("straight run", "rc 0", f"rc {rc}, {time.time() - t0:.0f}s", rc == 0)
  ref = state_hash(straight, STEPS) if rc == 0 else None

  # Full disk / read-only on a small tmpfs.
  mnt = os.path.join(out, "mnt")
  os.makedirs(mnt)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", mnt],
                           capture_output=True).returncode == 0
  if mounted:
    try:
      rc, log = run(data_dir, os.path.join(mnt, "w"), os.path.join(out, "full.log"))
      line = last_line(log)
      record("full disk (1.5 MB tmpfs)", "rc 1, one line: path + No space left",
             f"rc {rc}: {line}", rc == 1 and "No space left on device" in line and mnt in line)
      subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
      rc, log = run(data_dir, os.path.join(mnt, "w2"), os.path.join(out, "ro.log"))
      line = last_line(log)
      record("read-only workdir", "rc 1, one line: path + Read-only",
             f"rc {rc}: {line}", rc == 1 and "Read-only file system" in line)
    finally:
      subprocess.run(["umount", mnt])
  else:
    record("full disk / read-only", "tmpfs mount", "not run: mount failed (not root?)", True)
  f = os.path.join(out, "a_file")
  open(f, "w").write("x")
  rc, log = run(data_dir, f, f + ".log")
  record("workdir is a file", "rc 1, one line", f"rc {rc}: {last_line(log)}",
         rc == 1 and "not a directory" in last_line(log))

  # Two concurrent runs.
  w = os.path.join(out, "concurrent")
  a = launch(data_dir, w, w + ".a.log")
  while not os.path.exists(os.path.join(w, "run.lock")) and a.poll() is None:
    time.sleep(0.05)
  t0 = time.time()
  rc_b, log_b = run(data_dir, w, w + ".b.log")
  b_time = time.time() - t0
  rc_a = a.wait(timeout=900)
  record("two concurrent runs", "2nd: rc 1 naming holder; 1st: rc 0",
         f"2nd rc {rc_b} after {b_time:.0f}s: {last_line(log_b)[:90]}...; 1st rc {rc_a}",
         rc_b == 1 and "held by a running job" in log_b and rc_a == 0
         and state_hash(w, STEPS) == ref)

  # Changed configs on a finished run.
  for key, value in (("batch_size", 32), ("loss.beta", 2.0), ("model.name", "resnet34")):
    w = os.path.join(out, f"changed_{key}")
    shutil.copytree(straight, w)
    before = snapshot(w)
    rc, log = run(data_dir, w, w + ".log", overrides={key: value})
    record(f"resume with {key}={value}", "rc 1, one-line diff, files unchanged",
           f"rc {rc}, files {'unchanged' if snapshot(w) == before else 'CHANGED'}: "
           f"{last_line(log)[:100]}...", rc == 1 and snapshot(w) == before)

  # Divergence.
  w = os.path.join(out, "diverged")
  rc, log = run(data_dir, w, w + ".log", overrides={"optimizer.learning_rate": 1e38})
  record("lr 1e38", "rc 1, names step, no results.json",
         f"rc {rc}: {last_line(log)[:110]}...",
         rc == 1 and "diverged at step" in log and not os.path.exists(
             os.path.join(w, "results.json")))

  # SIGTERM in start-up and evaluation.
  def sigterm_when(w, ready, **env):
    """SIGTERM once ``ready(log text)`` holds (or the run ends), then a rerun: (rc, log, rerun rc)."""
    p = launch(data_dir, w, w + ".log", **env)
    while not ready(open(w + ".log").read()) and p.poll() is None:
      time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=300)
    log = open(w + ".log").read()
    rc2, _ = run(data_dir, w, w + ".rerun.log")
    return rc, log, rc2

  w = os.path.join(out, "term_startup")
  rc, log, rc2 = sigterm_when(w, lambda _: os.path.exists(os.path.join(w, "run.lock")))
  record("SIGTERM in start-up, rerun", "rc 75 + one line; rerun rc 0",
         f"rc {rc}: {last_line(log)[:80]}...; rerun rc {rc2}", rc == 75 and rc2 == 0)
  w = os.path.join(out, "term_eval")
  shutil.copytree(straight, w)
  os.remove(os.path.join(w, "results.json"))
  rc, log, rc2 = sigterm_when(w, lambda text: "evaluating the encoder" in text, EVAL_SLEEP="300")
  record("SIGTERM in evaluation, rerun", "rc 75 + one line; rerun rc 0",
         f"rc {rc}: {last_line(log)[:80]}...; rerun rc {rc2}",
         rc == 75 and rc2 == 0 and os.path.exists(os.path.join(w, "results.json")))

  # kill -9 at random moments, then rerun.
  for i in range(args.kills):
    w = os.path.join(out, f"kill{i}")
    p = launch(data_dir, w, w + ".log1")
    while not steps(w) and p.poll() is None:
      time.sleep(0.05)
    time.sleep(random.uniform(0, 8))
    p.send_signal(signal.SIGKILL)
    p.wait()
    at = steps(w)[-1] if steps(w) else 0
    rc, log = run(data_dir, w, w + ".log2")
    same = rc == 0 and state_hash(w, STEPS) == ref
    record(f"kill -9 #{i + 1} (last checkpoint {at}), rerun", "rc 0, bit-equal",
           f"rc {rc}, {'bit-equal' if same else 'DIFFERENT'}", same)

  # Corruptions of the newest checkpoint of a finished run.
  for kind in ("garbled", "truncated"):
    w = os.path.join(out, kind)
    shutil.copytree(straight, w)
    os.remove(os.path.join(w, "results.json"))
    for name in glob.glob(os.path.join(w, "checkpoints", str(STEPS), "state", "**", "d", "*"),
                          recursive=True):
      data = bytearray(open(name, "rb").read())
      if kind == "garbled":
        data[::97] = bytes(b ^ 0x5A for b in data[::97])
      else:
        data = data[:len(data) // 2]
      open(name, "wb").write(bytes(data))
    rc, log = run(data_dir, w, w + ".log")
    warnings = log.count("is unreadable")
    noise = log.count("Event loop is closed")
    same = rc == 0 and state_hash(w, STEPS) == ref
    record(f"{kind} newest checkpoint", "rc 0, 1 warning, no noise, bit-equal",
           f"rc {rc}, {warnings} warning(s), {noise} noise lines, "
           f"{'bit-equal' if same else 'DIFFERENT'}", same and warnings == 1 and noise == 0)

  # Exit codes of complete runs with the real evaluation.
  codes = []
  for i in range(args.exit_runs):
    w = os.path.join(out, f"exit{i}")
    rc, log = run(data_dir, w, w + ".log", REAL_EVAL="1",
                  overrides={"num_epochs": 1, "checkpoint_every_steps": 5})
    codes.append(rc)
    shutil.rmtree(w, ignore_errors=True)
  bad = [c for c in codes if c != 0]
  record(f"{args.exit_runs} complete runs (real evaluation)", "every rc 0",
         f"rc counts {dict((c, codes.count(c)) for c in set(codes))}", not bad)

  print("\n| fault | expected | observed | pass |\n|---|---|---|---|")
  for name, expected, observed, ok in rows:
    print(f"| {name} | {expected} | {observed.replace('|', '/')} | {'yes' if ok else 'NO'} |")
  return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
