#!/bin/sh
# Runs one worker's training and keeps a copy of its log in the workdir.
#
#   sh launch/worker_run.sh LOG DEST_DIR COPY_SECONDS -- COMMAND [ARG ...]
#
# Started by `launch/tpu.py run` on every worker (from the release folder,
# output already appended to LOG). Copies LOG to DEST_DIR/stdout_<host>.log
# (DEST_DIR is WORKDIR/logs: a gs:// bucket, so the log survives the VM)
# every COPY_SECONDS and once more when COMMAND exits; exits with its status.
# A SIGTERM to the process group (stop, a preemption) reaches COMMAND too:
# this script waits for it to checkpoint and exit, then copies the log.
# The copy goes through etils.epath with the release's python, like every
# other workdir file.
set -u
LOG=$1 DEST=$2 EVERY=$3
shift 3
[ "${1:-}" = "--" ] && shift
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
NAME="stdout_$(hostname).log"

copy_log() {
  timeout 120 "$PY" -c 'import sys
from etils import epath
dest = epath.Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
(dest / sys.argv[3]).write_bytes(epath.Path(sys.argv[1]).read_bytes())' \
    "$LOG" "$DEST" "$NAME" || echo "worker_run: copying $LOG to $DEST failed" >&2
}

"$@" &
CHILD=$!
trap 'kill -TERM "$CHILD" 2>/dev/null' TERM INT HUP
STOP="$LOG.copier-stop"
rm -f "$STOP"
# Copies every EVERY s, in 1 s naps so that it ends within 1 s of the stop
# file (a signal could land before a trap is set and orphan a long sleep).
( N=0
  while [ ! -e "$STOP" ]; do
    sleep 1
    N=$((N + 1))
    if [ "$N" -ge "$EVERY" ]; then N=0; copy_log; fi
  done ) &
COPIER=$!
CODE=0
wait "$CHILD" || CODE=$?
while kill -0 "$CHILD" 2>/dev/null; do   # woken by a trapped signal
  CODE=0
  wait "$CHILD" || CODE=$?
done
touch "$STOP"
wait "$COPIER" 2>/dev/null
rm -f "$STOP"
echo "=== exit $CODE $(date -u +%FT%TZ) on $(hostname) ==="
copy_log
exit "$CODE"
