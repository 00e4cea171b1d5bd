"""The names of what a run writes in its workdir: the one place they are spelled.

  WORKDIR/
    run.lock                 the live run's host, pid and start (run.guard)
    attempts.json            every start of the run, for wall_time_s (run.guard)
    config.json              the resolved config (run.metrics_log.save_config)
    checkpoints/<step>/      orbax checkpoints with checksums (run.checkpointing)
    metrics.jsonl            one JSON line per logged step (run.metrics_log)
    events.out.tfevents.*    TensorBoard scalars (run.tensorboard)
    logs/process_<i>.log     each process's console output (run.process_log)
    profile/process_<i>/     jax.profiler traces (train.profiling)
    results.json             written once, at the end (and by hcl_jax.evaluate)
"""

LOCK_FILE = "run.lock"
ATTEMPTS_FILE = "attempts.json"
CONFIG_JSON = "config.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_JSONL = "metrics.jsonl"
LOG_DIR = "logs"
PROFILE_DIR = "profile"
RESULTS_JSON = "results.json"


def process_file(index: int, suffix: str = ".log") -> str:
  """``process_<index><suffix>``: each process's own file in LOG_DIR / PROFILE_DIR."""
  return f"process_{index}{suffix}"
