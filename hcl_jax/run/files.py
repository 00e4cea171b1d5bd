"""What a run shows the world outside it: the names of what it writes in its
workdir and its exit codes, the one place they are spelled. The standard
library only: the launchers (``launch/``) import it on a laptop that has only
Python and gcloud.

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

# A config, data or run error a user can act on: a retry fails the same way.
EXIT_ERROR = 1
# "Interrupted before or after training, nothing lost, run it again":
# EX_TEMPFAIL of sysexits.h ("temporary failure, the user is invited to
# retry"). Schedulers retry it when told to (a Kubernetes podFailurePolicy or
# JobSet rule on exit code 75, Slurm's --requeue-exit, a shell `until`).
EXIT_RETRYABLE = 75
# Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


def process_file(index: int, suffix: str = ".log") -> str:
  """``process_<index><suffix>``: each process's own file in LOG_DIR / PROFILE_DIR."""
  return f"process_{index}{suffix}"
