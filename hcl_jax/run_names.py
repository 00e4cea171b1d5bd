"""What a run shows the world outside it: the workdir's file names and the exit codes.

One definition, the standard library only: ``hcl_jax.run_guard`` and the
trainers use these names, and so do the launchers (``launch/``), which
import this module on a laptop that has only Python and gcloud.
"""

LOCK_FILE = "run.lock"
ATTEMPTS_FILE = "attempts.json"
CONFIG_JSON = "config.json"
RESULTS_JSON = "results.json"      # written once, when the run is complete
CHECKPOINTS_DIR = "checkpoints"
METRICS_JSONL = "metrics.jsonl"

# A config, data or run error a user can act on: a retry fails the same way.
EXIT_ERROR = 1
# "Interrupted before or after training, nothing lost, run it again":
# EX_TEMPFAIL of sysexits.h ("temporary failure, the user is invited to
# retry"). Schedulers retry it when told to (a Kubernetes podFailurePolicy or
# JobSet rule on exit code 75, Slurm's --requeue-exit, a shell `until`).
EXIT_RETRYABLE = 75
# Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
