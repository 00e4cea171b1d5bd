#!/bin/sh
# Runs one worker's training and keeps a copy of its log in the workdir.
#
#   sh launch/worker_run.sh [--pid-file FILE] LOG DEST_DIR COPY_SECONDS -- COMMAND [ARG ...]
#
# Started by `launch/tpu.py run` on every worker (from the release folder,
# output already appended to LOG). Copies LOG to DEST_DIR/stdout_<host>.log
# (DEST_DIR is WORKDIR/logs: a gs:// bucket, so the log survives the VM)
# every COPY_SECONDS and once more when COMMAND exits; exits with COMMAND's
# status. A SIGTERM to the process group (stop, a preemption) reaches COMMAND
# too: this script waits for it to checkpoint and exit, then copies the log.
# The copy goes through etils.epath with the release's python, like every
# other workdir file.
#
# --pid-file FILE: this script's pid is written there (created atomically,
# noclobber) and removed at its end. If FILE names a live process, nothing is
# started: "already running", exit 3. Why: `gcloud ... tpu-vm ssh` retries a
# command up to 10 times when ssh exits 255 (a dropped connection), and a
# retry of `run` must not start a second trainer beside the first.
set -u
PID_FILE=
if [ "${1:-}" = "--pid-file" ]; then PID_FILE=$2; shift 2; fi
LOG=$1 DEST=$2 EVERY=$3
shift 3
[ "${1:-}" = "--" ] && shift
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
NAME="stdout_$(hostname).log"

if [ -n "$PID_FILE" ]; then
  # noclobber: of two starts racing, exactly one creates the file.
  if ! (set -C; echo "$$" > "$PID_FILE") 2>/dev/null; then
    OTHER=$(cat "$PID_FILE" 2>/dev/null || true)
    if [ -n "$OTHER" ] && kill -0 "$OTHER" 2>/dev/null; then
      echo "worker_run: hcl_jax training already running (pid $OTHER) on $(hostname): not starting a second" >&2
      exit 3
    fi
    # A pid file left by a run that died hard (SIGKILL, a reboot).
    rm -f "$PID_FILE"
    if ! (set -C; echo "$$" > "$PID_FILE") 2>/dev/null; then
      echo "worker_run: $PID_FILE was created by another start meanwhile: not starting a second" >&2
      exit 3
    fi
  fi
fi

copy_log() {
  timeout 120 "$PY" -c 'import sys
from etils import epath
dest = epath.Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
(dest / sys.argv[3]).write_bytes(epath.Path(sys.argv[1]).read_bytes())' \
    "$LOG" "$DEST" "$NAME" || echo "worker_run: copying $LOG to $DEST failed" >&2
}

STATUS="$LOG.exit-status"
TRAINER="$LOG.trainer-pid"
rm -f "$STATUS" "$TRAINER"
# The trainer's status comes from this inner shell, written to STATUS: it
# waits for the trainer as a foreground command, and a trapped signal does
# not interrupt a foreground wait (POSIX runs the trap after the command), so
# $? is the trainer's own status. (`wait` in this script returns 128+signal
# when a trapped signal interrupts it; the trainer's real status, e.g. 0
# after a clean checkpoint-and-exit, was then lost: issue 24.) `trap :` (not
# '', which children would inherit as "ignored") keeps the inner shell alive;
# `sh -c 'echo $$ ...; exec'` gives the trainer's own pid for forwarding.
( trap : TERM INT HUP
  sh -c 'echo $$ > "$0"; exec "$@"' "$TRAINER" "$@"
  echo $? > "$STATUS" ) &
CHILD=$!
forward() {
  kill -TERM "$(cat "$TRAINER" 2>/dev/null)" 2>/dev/null
}
trap forward TERM INT HUP
STOP="$LOG.copier-stop"
rm -f "$STOP"
# Copies every EVERY s, in 1 s naps so that it ends within 1 s of the stop
# file (a signal could land before a trap is set and orphan a long sleep).
( trap : TERM INT HUP
  N=0
  while [ ! -e "$STOP" ]; do
    sleep 1
    N=$((N + 1))
    if [ "$N" -ge "$EVERY" ]; then N=0; copy_log; fi
  done ) &
COPIER=$!
# Until the inner shell is gone: each trapped signal ends one `wait` early.
while kill -0 "$CHILD" 2>/dev/null; do
  wait "$CHILD"
done
CODE=$(cat "$STATUS" 2>/dev/null || echo 255)
touch "$STOP"
while kill -0 "$COPIER" 2>/dev/null; do
  wait "$COPIER"
done
rm -f "$STOP" "$STATUS" "$TRAINER"
echo "=== exit $CODE $(date -u +%FT%TZ) on $(hostname) ==="
copy_log
[ -n "$PID_FILE" ] && [ "$(cat "$PID_FILE" 2>/dev/null)" = "$$" ] && rm -f "$PID_FILE"
exit "$CODE"
